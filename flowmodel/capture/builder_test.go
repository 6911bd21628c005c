package capture

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

// packet is one captured frame for a test capture.
type packet struct {
	ts   time.Time
	lt   layers.LinkType
	data []byte
	// origLen, when set, is the frame's length on the wire (a truncated capture).
	origLen int
}

// builder assembles frames with gopacket's serializers.
type builder struct {
	t       testing.TB
	packets []packet
	// rawIPv6 frames IPv6 packets as raw IP rather than Ethernet, so that a pcapng capture
	// mixes link types.
	rawIPv6 bool
}

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
)

// frame serialises an IP packet carrying transport (and payload) in an Ethernet frame, or
// as raw IP for IPv6 when rawIPv6 is set.
func (b *builder) frame(src, dst netip.Addr, transport gopacket.SerializableLayer, payload []byte) (layers.LinkType, []byte) {
	b.t.Helper()
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
		ls = append(ls, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}, ip)
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		netLayer = ip
		if b.rawIPv6 {
			lt = layers.LinkTypeRaw
		} else {
			ls = append(ls, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6})
		}
		ls = append(ls, ip)
	}
	switch tl := transport.(type) {
	case *layers.TCP:
		if err := tl.SetNetworkLayerForChecksum(netLayer); err != nil {
			b.t.Fatal(err)
		}
	case *layers.UDP:
		if err := tl.SetNetworkLayerForChecksum(netLayer); err != nil {
			b.t.Fatal(err)
		}
	}
	ls = append(ls, transport)
	if payload != nil {
		ls = append(ls, gopacket.Payload(payload))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		b.t.Fatal(err)
	}
	return lt, bytes.Clone(buf.Bytes())
}

func (b *builder) add(ts time.Time, src, dst netip.Addr, transport gopacket.SerializableLayer, payload []byte) {
	lt, data := b.frame(src, dst, transport, payload)
	b.packets = append(b.packets, packet{ts: ts, lt: lt, data: data})
}

func (b *builder) udp(ts time.Time, src, dst netip.AddrPort, payload []byte) {
	b.add(ts, src.Addr(), dst.Addr(), &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}, payload)
}

// dns serialises a DNS message.
func (b *builder) dns(msg *layers.DNS) []byte {
	b.t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := msg.SerializeTo(buf, gopacket.SerializeOptions{FixLengths: true}); err != nil {
		b.t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// conn is a TCP connection in a test capture: it tracks sequence numbers.
type conn struct {
	b                 *builder
	client, server    netip.AddrPort
	clientISN, srvISN uint32
	clientOff, srvOff uint32 // stream offsets of the next bytes
	clientFin, srvFin bool
}

func (b *builder) conn(client, server netip.AddrPort) *conn {
	return &conn{b: b, client: client, server: server, clientISN: 1_000_000 + uint32(client.Port()), srvISN: 7_000_000 + uint32(server.Port())}
}

func (c *conn) seg(ts time.Time, fromClient bool, off uint32, payload []byte, set func(*layers.TCP)) {
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
	c.b.add(ts, src.Addr(), dst.Addr(), t, payload)
}

// handshake writes SYN, SYN-ACK and ACK, a millisecond apart from ts.
func (c *conn) handshake(ts time.Time) {
	c.b.add(ts, c.client.Addr(), c.server.Addr(), &layers.TCP{SrcPort: layers.TCPPort(c.client.Port()), DstPort: layers.TCPPort(c.server.Port()), Seq: c.clientISN, SYN: true, Window: 65535}, nil)
	c.b.add(ts.Add(time.Millisecond), c.server.Addr(), c.client.Addr(), &layers.TCP{SrcPort: layers.TCPPort(c.server.Port()), DstPort: layers.TCPPort(c.client.Port()), Seq: c.srvISN, Ack: c.clientISN + 1, SYN: true, ACK: true, Window: 65535}, nil)
	c.seg(ts.Add(2*time.Millisecond), true, 0, nil, nil)
}

// send writes payload from one side in segments of at most size bytes, each a
// millisecond after the previous, starting at ts.
func (c *conn) send(ts time.Time, fromClient bool, payload []byte, size int) {
	off := &c.srvOff
	if fromClient {
		off = &c.clientOff
	}
	for len(payload) > 0 {
		n := min(size, len(payload))
		c.seg(ts, fromClient, *off, payload[:n], nil)
		*off += uint32(n)
		payload = payload[n:]
		ts = ts.Add(time.Millisecond)
	}
}

// close writes FIN from both sides and the last ACK.
func (c *conn) close(ts time.Time) {
	fin := func(t *layers.TCP) { t.FIN = true }
	c.seg(ts, true, c.clientOff, nil, fin)
	c.clientOff++
	c.seg(ts.Add(time.Millisecond), false, c.srvOff, nil, fin)
	c.srvOff++
	c.seg(ts.Add(2*time.Millisecond), true, c.clientOff, nil, nil)
}

// reset writes an RST from the server.
func (c *conn) reset(ts time.Time) {
	c.seg(ts, false, c.srvOff, nil, func(t *layers.TCP) { t.RST = true })
}

// pcap writes the packets as a pcap file (nanosecond timestamps). Every packet must have
// the same link type.
func (b *builder) pcap() []byte {
	b.t.Helper()
	var out bytes.Buffer
	w := pcapgo.NewWriterNanos(&out)
	if err := w.WriteFileHeader(65535, b.packets[0].lt); err != nil {
		b.t.Fatal(err)
	}
	for _, p := range b.packets {
		if p.lt != b.packets[0].lt {
			b.t.Fatalf("pcap with mixed link types %v and %v", p.lt, b.packets[0].lt)
		}
		if err := w.WritePacket(p.captureInfo(), p.data); err != nil {
			b.t.Fatal(err)
		}
	}
	return out.Bytes()
}

// pcapng writes the packets as a pcapng file, one interface per link type.
func (b *builder) pcapng() []byte {
	b.t.Helper()
	var out bytes.Buffer
	w, err := pcapgo.NewNgWriter(&out, b.packets[0].lt)
	if err != nil {
		b.t.Fatal(err)
	}
	ifaces := map[layers.LinkType]int{b.packets[0].lt: 0}
	for _, p := range b.packets {
		id, ok := ifaces[p.lt]
		if !ok {
			intf := pcapgo.DefaultNgInterface
			intf.LinkType = p.lt
			intf.Name = "intf" + p.lt.String()
			if id, err = w.AddInterface(intf); err != nil {
				b.t.Fatal(err)
			}
			ifaces[p.lt] = id
		}
		ci := p.captureInfo()
		ci.InterfaceIndex = id
		if err := w.WritePacket(ci, p.data); err != nil {
			b.t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.t.Fatal(err)
	}
	return out.Bytes()
}

func (p packet) captureInfo() gopacket.CaptureInfo {
	n := len(p.data)
	if p.origLen > 0 {
		n = p.origLen
	}
	return gopacket.CaptureInfo{Timestamp: p.ts, CaptureLength: len(p.data), Length: n}
}

// clientHello returns the first TLS record a crypto/tls client writes for serverName.
func clientHello(t testing.TB, serverName string) []byte {
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
