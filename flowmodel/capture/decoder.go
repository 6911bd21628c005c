package capture

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/tcpassembly"
	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/meshguard/meshguard/flowmodel"
)

// maxSummaryKeys bounds the distinct services, destinations and shapes a Summary counts.
const maxSummaryKeys = 1 << 20

// Decoder turns packets into flows. Feed it packets in capture order with Packet, then call
// Close to flush what is still open. It is not safe for concurrent use.
type Decoder struct {
	cfg  Config
	emit func(flowmodel.Flow) error
	err  error // the first error from emit: decoding stops

	eth     layers.Ethernet
	dot1q   layers.Dot1Q
	sll     layers.LinuxSLL
	lo      layers.Loopback
	ip4     layers.IPv4
	ip6     layers.IPv6
	ext     layers.IPv6ExtensionSkipper
	tcp     layers.TCP
	udp     layers.UDP
	dns     layers.DNS
	parsers map[gopacket.LayerType]*gopacket.DecodingLayerParser
	decoded []gopacket.LayerType

	now       time.Time // the latest packet timestamp
	lastSweep time.Time

	pool  *tcpassembly.StreamPool
	asm   *tcpassembly.Assembler
	conns map[connKey]*tcpConn
	// The connection of the packet being assembled, for the stream factory.
	cur            *tcpConn
	curSrc, curDst netip.AddrPort

	udpConvs *simplelru.LRU[connKey, time.Time] // conversation → last datagram
	names    *simplelru.LRU[netip.Addr, string] // IP → the name it was resolved from

	sum      Summary
	services map[string]*serviceStats
	keys     int // distinct keys counted in services
}

type serviceStats struct {
	flows, requests int64
	dests, shapes   map[string]struct{}
}

// NewDecoder returns a decoder that calls emit with each flow. An error from emit stops
// decoding: Packet and Close return it.
func NewDecoder(cfg Config, emit func(flowmodel.Flow) error) (*Decoder, error) {
	cfg, err := cfg.Check()
	if err != nil {
		return nil, err
	}
	d := &Decoder{
		cfg:      cfg,
		emit:     emit,
		parsers:  make(map[gopacket.LayerType]*gopacket.DecodingLayerParser),
		conns:    make(map[connKey]*tcpConn),
		services: make(map[string]*serviceStats),
		sum:      Summary{Skipped: make(map[string]int64)},
	}
	for _, first := range []gopacket.LayerType{layers.LayerTypeEthernet, layers.LayerTypeLinuxSLL, layers.LayerTypeLoopback, layers.LayerTypeIPv4, layers.LayerTypeIPv6} {
		p := gopacket.NewDecodingLayerParser(first, &d.eth, &d.dot1q, &d.sll, &d.lo, &d.ip4, &d.ip6, &d.ext, &d.tcp, &d.udp)
		// Stop quietly at the first layer without a decoder (ARP, ICMP, the application
		// layer): what was decoded is checked below.
		p.IgnoreUnsupported = true
		d.parsers[first] = p
	}
	// NewLRU fails only for a non-positive size, which Check rules out.
	d.udpConvs, _ = simplelru.NewLRU[connKey, time.Time](cfg.MaxUDPFlows, nil)
	d.names, _ = simplelru.NewLRU[netip.Addr, string](cfg.MaxDNSBindings, nil)
	d.resetTCP()
	return d, nil
}

// resetTCP starts a fresh reassembler.
func (d *Decoder) resetTCP() {
	d.pool = tcpassembly.NewStreamPool(streamFactory{d})
	d.asm = tcpassembly.NewAssembler(d.pool)
	d.asm.MaxBufferedPagesTotal = d.cfg.MaxBufferedPages
	d.asm.MaxBufferedPagesPerConnection = min(max(d.cfg.MaxBufferedPages/64, 8), 256)
}

// linkTypeLinuxSLL2 is LINKTYPE_LINUX_SLL2 (276), written by "tcpdump -i any" since libpcap
// 1.10; gopacket v1.1.19 has no decoder for it. gopacket keeps link types in a uint8, so its
// readers hand it over as 276 mod 256 = 20, a value no other link type uses.
const linkTypeLinuxSLL2 layers.LinkType = 276 % 256

// firstLayer is the layer a link type starts with, after skip bytes of link header that no
// decoder reads. It returns gopacket.LayerTypeZero for a frame that holds no IP packet, and
// false for a link type it cannot read.
func firstLayer(lt layers.LinkType, data []byte) (first gopacket.LayerType, skip int, ok bool) {
	switch lt {
	case layers.LinkTypeEthernet:
		return layers.LayerTypeEthernet, 0, true
	case layers.LinkTypeLinuxSLL:
		return layers.LayerTypeLinuxSLL, 0, true
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		return layers.LayerTypeLoopback, 0, true
	case layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6, 12, 14: // 12 and 14: DLT_RAW on some BSDs
		if len(data) > 0 && data[0]>>4 == 6 {
			return layers.LayerTypeIPv6, 0, true
		}
		return layers.LayerTypeIPv4, 0, true
	case linkTypeLinuxSLL2:
		// protocol (2 bytes), reserved (2), interface (4), ARPHRD type (2), packet type (1),
		// address length (1), address (8).
		const header = 20
		if len(data) < header {
			return layers.LayerTypeLinuxSLL, 0, true // too short: let the SLL decoder say so
		}
		switch layers.EthernetType(binary.BigEndian.Uint16(data)) {
		case layers.EthernetTypeIPv4:
			return layers.LayerTypeIPv4, header, true
		case layers.EthernetTypeIPv6:
			return layers.LayerTypeIPv6, header, true
		}
		return gopacket.LayerTypeZero, 0, true
	}
	return 0, 0, false
}

// Packet decodes one captured packet. data is not retained after Packet returns. It returns
// the error that stopped decoding, if any.
func (d *Decoder) Packet(lt layers.LinkType, data []byte, ci gopacket.CaptureInfo) error {
	if d.err != nil {
		return d.err
	}
	d.sum.Packets++
	d.sum.Bytes += int64(len(data))
	ts := ci.Timestamp
	d.clock(ts)

	first, skip, ok := firstLayer(lt, data)
	switch {
	case !ok:
		d.skip(SkipUnsupportedLink, lt.String())
		return nil
	case first == gopacket.LayerTypeZero:
		d.sum.Other++
		return nil
	}
	p := d.parsers[first]
	err := p.DecodeLayers(data[skip:], &d.decoded)
	var (
		src, dst     netip.Addr
		netFlow      gopacket.Flow
		ip, frag     bool
		isTCP, isUDP bool
		truncated    = p.Truncated
	)
	for _, t := range d.decoded {
		switch t {
		case layers.LayerTypeIPv4:
			ip = true
			src, _ = netip.AddrFromSlice(d.ip4.SrcIP)
			dst, _ = netip.AddrFromSlice(d.ip4.DstIP)
			netFlow = d.ip4.NetworkFlow()
			frag = d.ip4.Flags&layers.IPv4MoreFragments != 0 || d.ip4.FragOffset != 0
		case layers.LayerTypeIPv6:
			ip = true
			src, _ = netip.AddrFromSlice(d.ip6.SrcIP)
			dst, _ = netip.AddrFromSlice(d.ip6.DstIP)
			netFlow = d.ip6.NetworkFlow()
		case layers.LayerTypeIPv6Fragment:
			frag = true
		case layers.LayerTypeTCP:
			isTCP = true
		case layers.LayerTypeUDP:
			isUDP = true
		}
	}
	switch {
	case frag:
		d.skip(SkipIPFragment, "")
		return nil
	case err != nil && truncated:
		d.skip(SkipTruncatedPacket, err.Error())
		return nil
	case err != nil:
		d.skip(SkipMalformedPacket, err.Error())
		return nil
	case !ip || (!isTCP && !isUDP):
		d.sum.Other++
		return nil
	}
	src, dst = flowmodel.NormalizeIP(src), flowmodel.NormalizeIP(dst)
	if isTCP {
		d.tcpPacket(netip.AddrPortFrom(src, uint16(d.tcp.SrcPort)), netip.AddrPortFrom(dst, uint16(d.tcp.DstPort)), netFlow, ts, truncated)
	} else {
		d.udpPacket(netip.AddrPortFrom(src, uint16(d.udp.SrcPort)), netip.AddrPortFrom(dst, uint16(d.udp.DstPort)), ts, truncated)
	}
	if d.now.Sub(d.lastSweep) >= d.cfg.StreamIdle/4 {
		d.sweep()
	}
	return d.err
}

func (d *Decoder) clock(ts time.Time) {
	if d.sum.First.IsZero() || ts.Before(d.sum.First) {
		d.sum.First = ts
	}
	if ts.After(d.sum.Last) {
		d.sum.Last = ts
	}
	if ts.After(d.now) {
		d.now = ts
		if d.lastSweep.IsZero() {
			d.lastSweep = ts
		}
	}
}

// Close flushes every open stream, emitting what they still hold, and returns the error
// that stopped decoding, if any. The decoder must not be used afterwards.
func (d *Decoder) Close() error {
	d.guardTCP(func() { d.asm.FlushAll() })
	d.finishAll()
	return d.err
}

// finishAll finishes every open connection, oldest first.
func (d *Decoder) finishAll() {
	open := make([]*tcpConn, 0, len(d.conns))
	for _, c := range d.conns {
		open = append(open, c)
	}
	sortConns(open)
	for _, c := range open {
		d.finish(c)
	}
}

// sweep flushes TCP streams idle for StreamIdle.
func (d *Decoder) sweep() {
	d.lastSweep = d.now
	cut := d.now.Add(-d.cfg.StreamIdle)
	d.guardTCP(func() { d.asm.FlushOlderThan(cut) })
	var stale []*tcpConn
	for _, c := range d.conns {
		if c.last.Before(cut) {
			stale = append(stale, c)
		}
	}
	sortConns(stale)
	for _, c := range stale {
		d.finish(c)
	}
}

// guardTCP runs f, which drives the reassembler. gopacket's reassembler panics on some
// inconsistent states (and holds a lock when it does): after a panic it is replaced, and
// the connections it held are finished as they stand.
func (d *Decoder) guardTCP(f func()) {
	defer func() {
		if v := recover(); v != nil {
			d.skip(SkipReassemblyFault, fmt.Sprint(v))
			d.cfg.Logger.Warn("TCP reassembly failed; dropping its streams", slog.Any("panic", v), slog.Int("streams", len(d.conns)))
			d.cur = nil
			d.resetTCP()
			d.finishAll()
		}
	}()
	f()
}

// udpPacket counts a datagram: the first of a conversation (or the first after UDPIdle of
// silence) is a flow. A DNS response binds its answers' addresses to the name asked.
func (d *Decoder) udpPacket(src, dst netip.AddrPort, ts time.Time, truncated bool) {
	key := makeKey(src, dst)
	last, seen := d.udpConvs.Get(key)
	if !seen || ts.Sub(last) >= d.cfg.UDPIdle {
		client, server := src, dst
		if src.Port() < 1024 && dst.Port() >= 1024 {
			client, server = dst, src // a reply from a well-known port: the other side asked
		}
		f := d.flow(client, server, "", ts)
		d.deliver(&f, &d.sum.UDPFlows)
	}
	if !seen || ts.After(last) {
		d.udpConvs.Add(key, ts)
	}
	if src.Port() != 53 || len(d.udp.Payload) == 0 {
		return
	}
	if truncated {
		d.skip(SkipTruncatedPacket, "DNS response")
		return
	}
	d.dnsResponse(d.udp.Payload)
}

// dnsResponse binds the A and AAAA answers of a successful response to the question name.
// With a CNAME chain the name bound is the one asked, the name the client used.
func (d *Decoder) dnsResponse(payload []byte) {
	if err := d.dns.DecodeFromBytes(payload, gopacket.NilDecodeFeedback); err != nil {
		d.skip(SkipDNSMalformed, err.Error())
		return
	}
	if !d.dns.QR || d.dns.ResponseCode != layers.DNSResponseCodeNoErr || len(d.dns.Questions) == 0 {
		return
	}
	name, err := flowmodel.ParseDestination(string(d.dns.Questions[0].Name))
	if err != nil || name.Host == "" || name.Port != 0 {
		return
	}
	for _, a := range d.dns.Answers {
		if (a.Type != layers.DNSTypeA && a.Type != layers.DNSTypeAAAA) || a.Class != layers.DNSClassIN {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		d.names.Add(flowmodel.NormalizeIP(ip), name.Host)
		d.sum.DNSAnswers++
	}
}

// flow builds a flow from client to server. host is the Host header or server name, if any;
// without one, the name the server's IP was resolved from in the capture, if any.
func (d *Decoder) flow(client, server netip.AddrPort, host string, t time.Time) flowmodel.Flow {
	f := flowmodel.Flow{
		Time:          t,
		Service:       d.cfg.Service(client.Addr()),
		Destination:   flowmodel.Destination{IP: server.Addr(), Port: server.Port()},
		RequestBytes:  -1,
		ResponseBytes: -1,
		Source:        Source,
	}
	if host != "" {
		if h, err := flowmodel.ParseDestination(host); err == nil {
			f.Destination.Host = h.Host // "" for an IP literal: the IP is known anyway
		}
	}
	if f.Destination.Host == "" {
		f.Destination.Host, _ = d.names.Get(server.Addr())
	}
	return f
}

// deliver emits f and counts it under kind.
func (d *Decoder) deliver(f *flowmodel.Flow, kind *int64) {
	if d.err != nil {
		return
	}
	if f.Service == "" {
		d.skip(SkipNoService, "")
		return
	}
	if err := d.emit(*f); err != nil {
		d.err = fmt.Errorf("capture: %w", err)
		return
	}
	d.sum.Flows++
	*kind++
	d.account(f)
}

func (d *Decoder) account(f *flowmodel.Flow) {
	s := d.services[f.Service]
	if s == nil {
		if d.keys >= maxSummaryKeys {
			d.sum.Approximate = true
			return
		}
		d.keys++
		s = &serviceStats{dests: make(map[string]struct{}), shapes: make(map[string]struct{})}
		d.services[f.Service] = s
	}
	s.flows++
	d.addKey(s.dests, f.Destination.String())
	if f.Method != "" {
		s.requests++
		path, _, _ := strings.Cut(f.Path, "?")
		d.addKey(s.shapes, f.Method+" "+path)
	}
}

func (d *Decoder) addKey(set map[string]struct{}, k string) {
	if _, ok := set[k]; ok {
		return
	}
	if d.keys >= maxSummaryKeys {
		d.sum.Approximate = true
		return
	}
	d.keys++
	set[k] = struct{}{}
}

func (d *Decoder) skip(reason, detail string) {
	d.sum.Skipped[reason]++
	if d.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		d.cfg.Logger.Debug("capture: skipped", slog.String("reason", reason), slog.String("detail", detail), slog.Int64("packet", d.sum.Packets))
	}
}

// Summary returns what has been decoded so far. The result is a copy.
func (d *Decoder) Summary() Summary {
	s := d.sum
	s.Skipped = make(map[string]int64, len(d.sum.Skipped))
	for k, v := range d.sum.Skipped {
		s.Skipped[k] = v
	}
	s.Services = make([]ServiceSummary, 0, len(d.services))
	for name, st := range d.services {
		s.Services = append(s.Services, ServiceSummary{
			Name: name, Flows: st.flows, Destinations: len(st.dests), Requests: st.requests, Shapes: len(st.shapes),
		})
	}
	slices.SortFunc(s.Services, func(a, b ServiceSummary) int { return cmp.Compare(a.Name, b.Name) })
	return s
}
