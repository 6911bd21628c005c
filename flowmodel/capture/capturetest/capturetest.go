// Package capturetest builds packet captures (pcap and pcapng) for tests: TCP connections
// with real handshakes and sequence numbers, UDP and DNS packets, TLS ClientHellos made by
// crypto/tls, all serialised with gopacket.
package capturetest

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Packet is one captured frame for a test capture.
type Packet struct {
	TS       time.Time
	LinkType layers.LinkType
	Data     []byte
	// OrigLen, when set, is the frame's length on the wire (a truncated capture).
	OrigLen int
}

// Builder assembles frames with gopacket's serializers.
type Builder struct {
	T       testing.TB
	Packets []Packet
	// RawIPv6 frames IPv6 packets as raw IP rather than Ethernet, so that a pcapng capture
	// mixes link types.
	RawIPv6 bool
}

var (
	MacA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	MacB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
)

// frame serialises an IP packet carrying transport (and payload) in an Ethernet frame, or
// as raw IP for IPv6 when rawIPv6 is set.
func (b *Builder) Frame(src, dst netip.Addr, transport gopacket.SerializableLayer, payload []byte) (layers.LinkType, []byte) {
	b.T.Helper()
	var netLayer gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	lt := layers.LinkTypeEthernet
	proto := layers.IPProtocolTCP
	if _, ok := transport.(*layers.UDP); ok {
		proto = layers.IPProtocolUDP
	}
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Flags: layers.IPv4DontFragment}
		netLayer = ip
		ls = append(ls, &layers.Ethernet{SrcMAC: MacA, DstMAC: MacB, EthernetType: layers.EthernetTypeIPv4}, ip)
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		netLayer = ip
		if b.RawIPv6 {
			lt = layers.LinkTypeRaw
		} else {
			ls = append(ls, &layers.Ethernet{SrcMAC: MacA, DstMAC: MacB, EthernetType: layers.EthernetTypeIPv6})
		}
		ls = append(ls, ip)
	}
	switch tl := transport.(type) {
	case *layers.TCP:
		if err := tl.SetNetworkLayerForChecksum(netLayer); err != nil {
			b.T.Fatal(err)
		}
	case *layers.UDP:
		if err := tl.SetNetworkLayerForChecksum(netLayer); err != nil {
			b.T.Fatal(err)
		}
	}
	ls = append(ls, transport)
	if payload != nil {
		ls = append(ls, gopacket.Payload(payload))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		b.T.Fatal(err)
	}
	return lt, bytes.Clone(buf.Bytes())
}

func (b *Builder) Add(ts time.Time, src, dst netip.Addr, transport gopacket.SerializableLayer, payload []byte) {
	lt, data := b.Frame(src, dst, transport, payload)
	b.Packets = append(b.Packets, Packet{TS: ts, LinkType: lt, Data: data})
}

func (b *Builder) UDP(ts time.Time, src, dst netip.AddrPort, payload []byte) {
	b.Add(ts, src.Addr(), dst.Addr(), &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}, payload)
}

// DNS serialises a DNS message.
func (b *Builder) DNS(msg *layers.DNS) []byte {
	b.T.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := msg.SerializeTo(buf, gopacket.SerializeOptions{FixLengths: true}); err != nil {
		b.T.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// Conn is a TCP connection in a test capture: it tracks sequence numbers.
type Conn struct {
	b                 *Builder
	client, server    netip.AddrPort
	clientISN, srvISN uint32
	clientOff, srvOff uint32 // stream offsets of the next bytes
	clientFin, srvFin bool
}

func (b *Builder) Conn(client, server netip.AddrPort) *Conn {
	return &Conn{b: b, client: client, server: server, clientISN: 1_000_000 + uint32(client.Port()), srvISN: 7_000_000 + uint32(server.Port())}
}

func (c *Conn) Seg(ts time.Time, fromClient bool, off uint32, payload []byte, set func(*layers.TCP)) {
	src, dst := c.client, c.server
	seq, ack := c.clientISN+1+off, c.srvISN+1+c.srvOff
	if !fromClient {
		src, dst = c.server, c.client
		seq, ack = c.srvISN+1+off, c.clientISN+1+c.clientOff
	}
	t := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, Ack: ack, ACK: true, PSH: len(payload) > 0, Window: 65535}
	if set != nil {
		set(t)
	}
	c.b.Add(ts, src.Addr(), dst.Addr(), t, payload)
}

// Handshake writes SYN, SYN-ACK and ACK, a millisecond apart from ts.
func (c *Conn) Handshake(ts time.Time) {
	c.b.Add(ts, c.client.Addr(), c.server.Addr(), &layers.TCP{SrcPort: layers.TCPPort(c.client.Port()), DstPort: layers.TCPPort(c.server.Port()), Seq: c.clientISN, SYN: true, Window: 65535}, nil)
	c.b.Add(ts.Add(time.Millisecond), c.server.Addr(), c.client.Addr(), &layers.TCP{SrcPort: layers.TCPPort(c.server.Port()), DstPort: layers.TCPPort(c.client.Port()), Seq: c.srvISN, Ack: c.clientISN + 1, SYN: true, ACK: true, Window: 65535}, nil)
	c.Seg(ts.Add(2*time.Millisecond), true, 0, nil, nil)
}

// Send writes payload from one side in segments of at most size bytes, each a
// millisecond after the previous, starting at ts.
func (c *Conn) Send(ts time.Time, fromClient bool, payload []byte, size int) {
	off := &c.srvOff
	if fromClient {
		off = &c.clientOff
	}
	for len(payload) > 0 {
		n := min(size, len(payload))
		c.Seg(ts, fromClient, *off, payload[:n], nil)
		*off += uint32(n)
		payload = payload[n:]
		ts = ts.Add(time.Millisecond)
	}
}

// Close writes FIN from both sides and the last ACK.
func (c *Conn) Close(ts time.Time) {
	fin := func(t *layers.TCP) { t.FIN = true }
	c.Seg(ts, true, c.clientOff, nil, fin)
	c.clientOff++
	c.Seg(ts.Add(time.Millisecond), false, c.srvOff, nil, fin)
	c.srvOff++
	c.Seg(ts.Add(2*time.Millisecond), true, c.clientOff, nil, nil)
}

// Reset writes an RST from the server.
func (c *Conn) Reset(ts time.Time) {
	c.Seg(ts, false, c.srvOff, nil, func(t *layers.TCP) { t.RST = true })
}

// Pcap writes the packets as a pcap file (nanosecond timestamps). Every packet must have
// the same link type.
func (b *Builder) Pcap() []byte {
	b.T.Helper()
	var out bytes.Buffer
	w := pcapgo.NewWriterNanos(&out)
	if err := w.WriteFileHeader(65535, b.Packets[0].LinkType); err != nil {
		b.T.Fatal(err)
	}
	for _, p := range b.Packets {
		if p.LinkType != b.Packets[0].LinkType {
			b.T.Fatalf("pcap with mixed link types %v and %v", p.LinkType, b.Packets[0].LinkType)
		}
		if err := w.WritePacket(p.CaptureInfo(), p.Data); err != nil {
			b.T.Fatal(err)
		}
	}
	return out.Bytes()
}

// Pcapng writes the packets as a pcapng file, one interface per link type.
func (b *Builder) Pcapng() []byte {
	b.T.Helper()
	var out bytes.Buffer
	w, err := pcapgo.NewNgWriter(&out, b.Packets[0].LinkType)
	if err != nil {
		b.T.Fatal(err)
	}
	ifaces := map[layers.LinkType]int{b.Packets[0].LinkType: 0}
	for _, p := range b.Packets {
		id, ok := ifaces[p.LinkType]
		if !ok {
			intf := pcapgo.DefaultNgInterface
			intf.LinkType = p.LinkType
			intf.Name = "intf" + p.LinkType.String()
			if id, err = w.AddInterface(intf); err != nil {
				b.T.Fatal(err)
			}
			ifaces[p.LinkType] = id
		}
		ci := p.CaptureInfo()
		ci.InterfaceIndex = id
		if err := w.WritePacket(ci, p.Data); err != nil {
			b.T.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.T.Fatal(err)
	}
	return out.Bytes()
}

// CaptureInfo is the packet's gopacket capture info.
func (p Packet) CaptureInfo() gopacket.CaptureInfo {
	n := len(p.Data)
	if p.OrigLen > 0 {
		n = p.OrigLen
	}
	return gopacket.CaptureInfo{Timestamp: p.TS, CaptureLength: len(p.Data), Length: n}
}

// ClientHello returns the first TLS record a crypto/tls client writes for serverName.
func ClientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tc := tls.Client(c1, &tls.Config{ServerName: serverName, InsecureSkipVerify: serverName == ""})
		_ = tc.Handshake() // fails once the pipe closes
		_ = c1.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c2, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(c2, body); err != nil {
		t.Fatal(err)
	}
	_ = c2.Close()
	<-done
	return append(hdr, body...)
}

// Advance counts n bytes as sent by one side, for payload written out of order with Seg.
func (c *Conn) Advance(fromClient bool, n uint32) {
	if fromClient {
		c.clientOff += n
	} else {
		c.srvOff += n
	}
}
