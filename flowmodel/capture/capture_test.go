package capture

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"github.com/meshguard/meshguard/flowmodel/capture/capturetest"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/meshguard/meshguard/flowmodel"
)

var (
	t0       = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	client4  = netip.MustParseAddr("10.0.0.7")
	resolver = netip.MustParseAddr("10.96.0.10")
	apiIP    = netip.MustParseAddr("203.0.113.7")
	tlsIP    = netip.MustParseAddr("198.51.100.9")
	statsdIP = netip.MustParseAddr("192.0.2.50")
	client6  = netip.MustParseAddr("fd00::7")
	server6  = netip.MustParseAddr("2001:db8::80")
)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

const (
	postRequest = "POST /v1/charges?x=1 HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\n" +
		"Content-Length: 13\r\nX-Request-Id: abc\r\n\r\n{\"amount\":42}"
	putRequest = "PUT /v1/items/7 HTTP/1.1\r\nHost: API.example.com:80\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
	getRequest = "GET /healthz HTTP/1.1\r\nHost: [2001:db8::80]:8080\r\nUser-Agent: probe\r\nAccept: */*\r\n\r\n"
)

// scenario builds the test capture: DNS, HTTP split and out of order, chunked HTTP on the
// same connection, TLS with SNI, a plain TCP connection to a resolved IP, UDP, IPv6 HTTP,
// an ARP frame and a malformed packet.
func scenario(t testing.TB, rawIPv6 bool, serverName string) *capturetest.Builder {
	b := &capturetest.Builder{T: t, RawIPv6: rawIPv6}

	// DNS: api.example.com is a CNAME of an edge name with the A record; a second query
	// gets NXDOMAIN.
	b.UDP(at(0), ap(client4, 40000), ap(resolver, 53), b.DNS(&layers.DNS{ID: 7, RD: true,
		Questions: []layers.DNSQuestion{{Name: []byte("api.example.com"), Type: layers.DNSTypeA, Class: layers.DNSClassIN}}}))
	b.UDP(at(2), ap(resolver, 53), ap(client4, 40000), b.DNS(&layers.DNS{ID: 7, QR: true, RD: true, RA: true,
		Questions: []layers.DNSQuestion{{Name: []byte("api.example.com"), Type: layers.DNSTypeA, Class: layers.DNSClassIN}},
		Answers: []layers.DNSResourceRecord{
			{Name: []byte("api.example.com"), Type: layers.DNSTypeCNAME, Class: layers.DNSClassIN, TTL: 30, CNAME: []byte("edge.cdn.example.net")},
			{Name: []byte("edge.cdn.example.net"), Type: layers.DNSTypeA, Class: layers.DNSClassIN, TTL: 30, IP: apiIP.AsSlice()},
		}}))
	b.UDP(at(3), ap(resolver, 53), ap(client4, 40000), b.DNS(&layers.DNS{ID: 8, QR: true, ResponseCode: layers.DNSResponseCodeNXDomain,
		Questions: []layers.DNSQuestion{{Name: []byte("nope.example.com"), Type: layers.DNSTypeA, Class: layers.DNSClassIN}}}))

	// HTTP/1.1 keep-alive: a POST in three segments, the middle one captured first, then a
	// chunked PUT in 16-byte segments.
	web := b.Conn(ap(client4, 41000), ap(apiIP, 80))
	web.Handshake(at(1000))
	post := []byte(postRequest)
	web.Seg(at(1010), true, 20, post[20:60], nil)
	web.Seg(at(1011), true, 0, post[:20], nil)
	web.Seg(at(1012), true, 60, post[60:], nil)
	web.Advance(true, uint32(len(post)))
	web.Send(at(1020), false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), 1400)
	web.Send(at(1030), true, []byte(putRequest), 16)
	web.Send(at(1040), false, []byte("HTTP/1.1 204 No Content\r\n\r\n"), 1400)
	web.Close(at(1050))

	// TLS: the ClientHello in two segments, then a reset.
	sec := b.Conn(ap(client4, 42000), ap(tlsIP, 443))
	sec.Handshake(at(2000))
	hello := capturetest.ClientHello(t, serverName)
	sec.Send(at(2010), true, hello, 100)
	sec.Reset(at(2020))

	// An opaque protocol to an IP resolved above.
	pg := b.Conn(ap(client4, 43000), ap(apiIP, 5432))
	pg.Handshake(at(3000))
	pg.Send(at(3010), true, []byte{0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f}, 1400)
	pg.Send(at(3011), false, []byte("N"), 1400)
	pg.Close(at(3020))

	// UDP: two datagrams, one conversation.
	b.UDP(at(4000), ap(client4, 50000), ap(statsdIP, 8125), []byte("hits:1|c"))
	b.UDP(at(4001), ap(client4, 50000), ap(statsdIP, 8125), []byte("hits:2|c"))

	// IPv6 HTTP, left open: Close flushes it.
	v6 := b.Conn(ap(client6, 44000), ap(server6, 8080))
	v6.Handshake(at(5000))
	v6.Send(at(5010), true, []byte(getRequest), 1400)

	// Not TCP or UDP: an ARP request.
	arp := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(arp, gopacket.SerializeOptions{FixLengths: true},
		&layers.Ethernet{SrcMAC: capturetest.MacA, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: capturetest.MacA, SourceProtAddress: client4.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: resolver.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	b.Packets = append(b.Packets, capturetest.Packet{TS: at(6000), LinkType: layers.LinkTypeEthernet, Data: arp.Bytes()})

	// Malformed: an IPv4 header length of 2 words.
	_, bad := b.Frame(client4, apiIP, &layers.UDP{SrcPort: 1, DstPort: 2}, []byte("x"))
	bad[14] = 0x42
	b.Packets = append(b.Packets, capturetest.Packet{TS: at(6001), LinkType: layers.LinkTypeEthernet, Data: bad})
	return b
}

// wantFlows are the flows of scenario, in the order they are emitted, for service svc4 (the
// IPv4 client) and svc6 (the IPv6 client).
func wantFlows(svc4, svc6 string) []flowmodel.Flow {
	flow := func(ms int, svc string, dst netip.AddrPort, host string) flowmodel.Flow {
		return flowmodel.Flow{Time: at(ms), Service: svc, Destination: flowmodel.Destination{IP: dst.Addr(), Port: dst.Port(), Host: host},
			RequestBytes: -1, ResponseBytes: -1, Source: Source}
	}
	post := flow(1011, svc4, ap(apiIP, 80), "api.example.com")
	post.Method, post.Path, post.HeaderKeys, post.ContentType, post.RequestBytes = "POST", "/v1/charges?x=1",
		[]string{"content-length", "content-type", "x-request-id"}, "application/json", 13
	put := flow(1030, svc4, ap(apiIP, 80), "api.example.com")
	put.Method, put.Path, put.HeaderKeys, put.RequestBytes = "PUT", "/v1/items/7", []string{"transfer-encoding"}, 11
	get := flow(5010, svc6, ap(server6, 8080), "")
	get.Method, get.Path, get.HeaderKeys, get.RequestBytes = "GET", "/healthz", []string{"accept", "user-agent"}, 0
	return []flowmodel.Flow{
		flow(0, svc4, ap(resolver, 53), ""),
		post,
		put,
		flow(2010, svc4, ap(tlsIP, 443), "pay.example.org"),
		flow(3000, svc4, ap(apiIP, 5432), "api.example.com"), // the name DNS resolved it from
		flow(4000, svc4, ap(statsdIP, 8125), ""),
		get,
	}
}

func readAll(t *testing.T, data []byte, cfg Config) ([]flowmodel.Flow, Summary) {
	t.Helper()
	var got []flowmodel.Flow
	sum, err := Read(context.Background(), bytes.NewReader(data), cfg, func(f flowmodel.Flow) error {
		got = append(got, f)
		return nil
	})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return got, sum
}

func diffFlows(t *testing.T, got, want []flowmodel.Flow) {
	t.Helper()
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			t.Errorf("flow %d missing: want %+v", i, want[i])
		case i >= len(want):
			t.Errorf("flow %d unexpected: %+v", i, got[i])
		case !reflect.DeepEqual(got[i], want[i]):
			t.Errorf("flow %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

func gz(t testing.TB, b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestReadScenario(t *testing.T) {
	sc := scenario(t, false, "pay.example.org")
	pcapFile := sc.Pcap()
	ngFile := scenario(t, true, "pay.example.org").Pcapng()
	packets := int64(len(sc.Packets))
	cases := []struct {
		name       string
		file       []byte
		service    ServiceFunc
		svc4, svc6 string
	}{
		{"pcap fixed service", pcapFile, Fixed("shop/checkout"), "shop/checkout", "shop/checkout"},
		{"pcap service by source IP", pcapFile, BySourceIP, "10.0.0.7", "fd00::7"},
		{"pcapng mixed link types", ngFile, Fixed("shop/checkout"), "shop/checkout", "shop/checkout"},
		{"gzipped pcap", gz(t, pcapFile), BySourceIP, "10.0.0.7", "fd00::7"},
		{"gzipped pcapng", gz(t, ngFile), BySourceIP, "10.0.0.7", "fd00::7"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A file on disk, as the CLI reads it.
			path := filepath.Join(t.TempDir(), "capture")
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var got []flowmodel.Flow
			var progress []Progress
			sum, err := Read(context.Background(), f, Config{Service: tc.service, ProgressEvery: 10, Progress: func(p Progress) { progress = append(progress, p) }},
				func(f flowmodel.Flow) error { got = append(got, f); return nil })
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			diffFlows(t, got, wantFlows(tc.svc4, tc.svc6))

			want := Summary{
				Packets: packets, Other: 1, Flows: 7, HTTPRequests: 3, TLSHellos: 1, TCPConnections: 1, UDPFlows: 2, DNSAnswers: 1,
				Skipped: map[string]int64{SkipMalformedPacket: 1}, First: at(0), Last: at(6001),
			}
			if tc.svc4 == tc.svc6 {
				want.Services = []ServiceSummary{{Name: tc.svc4, Flows: 7, Destinations: 6, Requests: 3, Shapes: 3}}
			} else {
				want.Services = []ServiceSummary{
					{Name: tc.svc4, Flows: 6, Destinations: 5, Requests: 2, Shapes: 2},
					{Name: tc.svc6, Flows: 1, Destinations: 1, Requests: 1, Shapes: 1},
				}
			}
			sum.Bytes = 0 // frame sizes differ between link types; checked below
			if !reflect.DeepEqual(sum, want) {
				t.Errorf("summary:\n got %+v\nwant %+v", sum, want)
			}

			if want := int(packets/10) + 1; len(progress) != want {
				t.Fatalf("%d progress calls, want %d (every 10 of %d packets, and the last)", len(progress), want, packets)
			}
			last := progress[len(progress)-1]
			if !last.Done || last.Packets != packets || last.Flows != 7 || last.Bytes != int64(len(tc.file)) || !last.Time.Equal(at(6001)) {
				t.Errorf("last progress %+v: want done, %d packets, 7 flows, %d bytes, time %v", last, packets, len(tc.file), at(6001))
			}
			if p := progress[0]; p.Done || p.Packets != 10 {
				t.Errorf("first progress %+v: want 10 packets, not done", p)
			}
		})
	}
}

func TestReadCountsBytes(t *testing.T) {
	b := scenario(t, false, "pay.example.org")
	var want int64
	for _, p := range b.Packets {
		want += int64(len(p.Data))
	}
	_, sum := readAll(t, b.Pcap(), Config{Service: BySourceIP})
	if sum.Bytes != want {
		t.Errorf("Bytes = %d, want %d", sum.Bytes, want)
	}
}

func TestTLSWithoutServerNameUsesDNSName(t *testing.T) {
	// A ClientHello without SNI to an IP bound by an earlier DNS answer gets that name.
	b := &capturetest.Builder{T: t}
	b.UDP(at(0), ap(resolver, 53), ap(client4, 40000), b.DNS(&layers.DNS{ID: 1, QR: true,
		Questions: []layers.DNSQuestion{{Name: []byte("Pay.Example.ORG"), Type: layers.DNSTypeAAAA, Class: layers.DNSClassIN}},
		Answers:   []layers.DNSResourceRecord{{Name: []byte("pay.example.org"), Type: layers.DNSTypeAAAA, Class: layers.DNSClassIN, TTL: 5, IP: server6.AsSlice()}}}))
	c := b.Conn(ap(client6, 42000), ap(server6, 443))
	c.Handshake(at(10))
	c.Send(at(20), true, capturetest.ClientHello(t, ""), 1400)
	c.Close(at(30))
	got, sum := readAll(t, b.Pcap(), Config{Service: Fixed("svc")})
	want := []flowmodel.Flow{
		{Time: at(0), Service: "svc", Destination: flowmodel.Destination{IP: resolver, Port: 53}, RequestBytes: -1, ResponseBytes: -1, Source: Source},
		{Time: at(20), Service: "svc", Destination: flowmodel.Destination{IP: server6, Port: 443, Host: "pay.example.org"}, RequestBytes: -1, ResponseBytes: -1, Source: Source},
	}
	diffFlows(t, got, want)
	if sum.TLSHellos != 1 || sum.DNSAnswers != 1 {
		t.Errorf("summary %+v: want 1 TLS hello and 1 DNS answer", sum)
	}
}

func TestSkips(t *testing.T) {
	cases := []struct {
		name      string
		build     func(b *capturetest.Builder)
		cfg       Config
		wantSkip  map[string]int64
		wantFlows int
	}{
		{
			name: "snap length cut a data segment",
			build: func(b *capturetest.Builder) {
				c := b.Conn(ap(client4, 41000), ap(apiIP, 80))
				c.Handshake(at(0))
				c.Send(at(10), true, []byte(postRequest), 1400)
				p := &b.Packets[len(b.Packets)-1]
				p.OrigLen = len(p.Data)
				p.Data = p.Data[:60]
			},
			// The request is lost; the connection is still a destination.
			wantSkip:  map[string]int64{SkipTruncatedPacket: 1},
			wantFlows: 1,
		},
		{
			name: "IPv4 fragment",
			build: func(b *capturetest.Builder) {
				_, data := b.Frame(client4, apiIP, &layers.UDP{SrcPort: 1000, DstPort: 2000}, []byte("fragment"))
				data[14+6] |= 0x20 // more fragments
				b.Packets = append(b.Packets, capturetest.Packet{TS: at(0), LinkType: layers.LinkTypeEthernet, Data: data})
			},
			wantSkip: map[string]int64{SkipIPFragment: 1},
		},
		{
			name: "unsupported link type",
			build: func(b *capturetest.Builder) {
				b.Packets = append(b.Packets, capturetest.Packet{TS: at(0), LinkType: layers.LinkTypeIEEE802_11, Data: []byte{1, 2, 3}})
			},
			wantSkip: map[string]int64{SkipUnsupportedLink: 1},
		},
		{
			name: "malformed HTTP request",
			build: func(b *capturetest.Builder) {
				c := b.Conn(ap(client4, 41000), ap(apiIP, 80))
				c.Handshake(at(0))
				c.Send(at(10), true, []byte("GET /x HTTP/1.1\r\nBad Header Line\r\n\r\n"), 1400)
				c.Close(at(20))
			},
			wantSkip:  map[string]int64{SkipHTTPMalformed: 1},
			wantFlows: 1, // the connection itself
		},
		{
			name: "HTTP header over the limit",
			build: func(b *capturetest.Builder) {
				c := b.Conn(ap(client4, 41000), ap(apiIP, 80))
				c.Handshake(at(0))
				c.Send(at(10), true, []byte("GET / HTTP/1.1\r\nX-Big: "+strings.Repeat("a", 3000)+"\r\n\r\n"), 1400)
				c.Close(at(20))
			},
			cfg:       Config{MaxHeaderBytes: 2048},
			wantSkip:  map[string]int64{SkipHTTPHeaderTooLarge: 1},
			wantFlows: 1,
		},
		{
			name: "stream ends inside a request",
			build: func(b *capturetest.Builder) {
				c := b.Conn(ap(client4, 41000), ap(apiIP, 80))
				c.Handshake(at(0))
				c.Send(at(10), true, []byte("GET / HTTP/1.1\r\nHost: a"), 1400)
				c.Close(at(20))
			},
			wantSkip:  map[string]int64{SkipHTTPIncomplete: 1},
			wantFlows: 1,
		},
		{
			name: "malformed ClientHello",
			build: func(b *capturetest.Builder) {
				c := b.Conn(ap(client4, 42000), ap(tlsIP, 443))
				c.Handshake(at(0))
				c.Send(at(10), true, []byte{22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3}, 1400)
				c.Close(at(20))
			},
			wantSkip:  map[string]int64{SkipTLSMalformed: 1},
			wantFlows: 1,
		},
		{
			name: "malformed DNS response",
			build: func(b *capturetest.Builder) {
				b.UDP(at(0), ap(resolver, 53), ap(client4, 40000), []byte{0, 1, 0x81, 0x80, 0, 1, 0, 1})
			},
			wantSkip:  map[string]int64{SkipDNSMalformed: 1},
			wantFlows: 1,
		},
		{
			name: "stream limit",
			build: func(b *capturetest.Builder) {
				b.Conn(ap(client4, 41000), ap(apiIP, 80)).Handshake(at(0))
				c := b.Conn(ap(client4, 41001), ap(apiIP, 80))
				c.Handshake(at(10)) // SYN skipped, SYN-ACK skipped; the ACK carries nothing
				c.Send(at(20), true, []byte("GET / HTTP/1.1\r\n\r\n"), 1400)
			},
			cfg:       Config{MaxStreams: 1},
			wantSkip:  map[string]int64{SkipTCPStreamLimit: 3},
			wantFlows: 1,
		},
		{
			name: "connection without handshake between ephemeral ports",
			build: func(b *capturetest.Builder) {
				c := b.Conn(ap(client4, 40001), ap(apiIP, 40002))
				c.Send(at(10), true, []byte{1, 2, 3}, 1400)
			},
			wantSkip: map[string]int64{SkipTCPNoHandshake: 1},
		},
		{
			name: "empty service name",
			build: func(b *capturetest.Builder) {
				b.UDP(at(0), ap(client4, 40000), ap(statsdIP, 8125), []byte("x"))
			},
			cfg:      Config{Service: Fixed("")},
			wantSkip: map[string]int64{SkipNoService: 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &capturetest.Builder{T: t}
			tc.build(b)
			cfg := tc.cfg
			if cfg.Service == nil {
				cfg.Service = Fixed("svc")
			}
			got, sum := readAll(t, b.Pcap(), cfg)
			if !reflect.DeepEqual(sum.Skipped, tc.wantSkip) {
				t.Errorf("skipped %v, want %v", sum.Skipped, tc.wantSkip)
			}
			if len(got) != tc.wantFlows {
				t.Errorf("%d flows, want %d: %+v", len(got), tc.wantFlows, got)
			}
		})
	}
}

func TestLinuxSLL2(t *testing.T) {
	// "tcpdump -i any" writes LINKTYPE_LINUX_SLL2 frames: a 20-byte header, then IP.
	b := &capturetest.Builder{T: t}
	sll2 := func(proto uint16, ip []byte) []byte {
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h, proto)
		binary.BigEndian.PutUint16(h[8:], 1) // ARPHRD_ETHER
		h[11] = 6
		return append(h, ip...)
	}
	_, v4 := b.Frame(client4, statsdIP, &layers.UDP{SrcPort: 50000, DstPort: 8125}, []byte("hits:1|c"))
	_, v6 := b.Frame(client6, server6, &layers.UDP{SrcPort: 50000, DstPort: 8125}, []byte("hits:1|c"))
	b.Packets = append(b.Packets,
		capturetest.Packet{TS: at(0), LinkType: linkTypeLinuxSLL2, Data: sll2(0x0800, v4[14:])},
		capturetest.Packet{TS: at(1), LinkType: linkTypeLinuxSLL2, Data: sll2(0x86dd, v6[14:])},
		capturetest.Packet{TS: at(2), LinkType: linkTypeLinuxSLL2, Data: sll2(0x0806, make([]byte, 28))}, // ARP
		capturetest.Packet{TS: at(3), LinkType: linkTypeLinuxSLL2, Data: sll2(0x0800, v4[14:30])},        // cut short
	)
	file := b.Pcap()
	binary.LittleEndian.PutUint32(file[20:], 276) // the header's link type, as libpcap writes it
	got, sum := readAll(t, file, Config{Service: BySourceIP})
	diffFlows(t, got, []flowmodel.Flow{
		{Time: at(0), Service: "10.0.0.7", Destination: flowmodel.Destination{IP: statsdIP, Port: 8125}, RequestBytes: -1, ResponseBytes: -1, Source: Source},
		{Time: at(1), Service: "fd00::7", Destination: flowmodel.Destination{IP: server6, Port: 8125}, RequestBytes: -1, ResponseBytes: -1, Source: Source},
	})
	if sum.Other != 1 || !reflect.DeepEqual(sum.Skipped, map[string]int64{SkipTruncatedPacket: 1}) {
		t.Errorf("other %d, skipped %v; want 1 and one truncated packet", sum.Other, sum.Skipped)
	}
}

func TestMidstreamConnection(t *testing.T) {
	// The capture starts after the handshake: the request itself tells the client, and
	// its time is the packet's.
	b := &capturetest.Builder{T: t}
	c := b.Conn(ap(client4, 50123), ap(apiIP, 8080))
	c.Send(at(10), false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 1400)
	c.Send(at(20), true, []byte("DELETE /v1/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n"), 1400)
	got, sum := readAll(t, b.Pcap(), Config{Service: BySourceIP})
	want := flowmodel.Flow{Time: at(20), Service: "10.0.0.7", Destination: flowmodel.Destination{IP: apiIP, Port: 8080, Host: "api.example.com"},
		Method: "DELETE", Path: "/v1/x", HeaderKeys: nil, RequestBytes: 0, ResponseBytes: -1, Source: Source}
	diffFlows(t, got, []flowmodel.Flow{want})
	if len(sum.Skipped) != 0 {
		t.Errorf("skipped %v", sum.Skipped)
	}
}

func TestIdleStreamsAreFlushed(t *testing.T) {
	// Two connections without FIN, far apart in capture time: the first is flushed (its
	// destination emitted) when the second arrives, before the capture ends.
	b := &capturetest.Builder{T: t}
	b.Conn(ap(client4, 41000), ap(apiIP, 5432)).Handshake(at(0))
	b.Conn(ap(client4, 41001), ap(apiIP, 6379)).Handshake(at(10 * 60 * 1000))
	d, err := NewDecoder(Config{Service: Fixed("svc"), StreamIdle: time.Minute}, func(flowmodel.Flow) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range b.Packets {
		if err := d.Packet(p.LinkType, p.Data, p.CaptureInfo()); err != nil {
			t.Fatal(err)
		}
	}
	if s := d.Summary(); s.TCPConnections != 1 || len(d.conns) != 1 {
		t.Errorf("before Close: %d connection flows, %d open; want 1 and 1", s.TCPConnections, len(d.conns))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if s := d.Summary(); s.TCPConnections != 2 || len(d.conns) != 0 {
		t.Errorf("after Close: %d connection flows, %d open; want 2 and 0", s.TCPConnections, len(d.conns))
	}
}

func TestEmitErrorStops(t *testing.T) {
	file := scenario(t, false, "pay.example.org").Pcap()
	stop := errors.New("store is full")
	n := 0
	sum, err := Read(context.Background(), bytes.NewReader(file), Config{Service: BySourceIP}, func(flowmodel.Flow) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("err = %v, want %v", err, stop)
	}
	if n != 2 || sum.Flows != 1 {
		t.Errorf("emit called %d times with %d flows counted; want 2 and 1", n, sum.Flows)
	}
}

func TestReadCancelled(t *testing.T) {
	b := &capturetest.Builder{T: t}
	for i := range 3000 {
		b.UDP(at(i), ap(client4, uint16(1024+i)), ap(statsdIP, 8125), []byte("x"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sum, err := Read(ctx, bytes.NewReader(b.Pcap()), Config{Service: BySourceIP}, func(flowmodel.Flow) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if sum.Packets != 1023 {
		t.Errorf("read %d packets before noticing; want 1023", sum.Packets)
	}
}

func TestReadBadFiles(t *testing.T) {
	good := scenario(t, false, "pay.example.org").Pcap()
	goodNg := scenario(t, true, "pay.example.org").Pcapng()
	corrupt := bytes.Clone(good)
	// The first record's captured length: past the limit.
	copy(corrupt[24+8:], []byte{0xff, 0xff, 0xff, 0x7f})
	hugeNg := bytes.Clone(goodNg)
	// Find the first enhanced packet block and give it an absurd captured length.
	i := 0
	for binary.LittleEndian.Uint32(hugeNg[i:]) != 6 {
		i += int(binary.LittleEndian.Uint32(hugeNg[i+4:]))
	}
	copy(hugeNg[i+20:], []byte{0xff, 0xff, 0xff, 0x7f})

	cases := []struct {
		name     string
		file     []byte
		wantErr  error // nil: no error
		anyErr   bool
		wantSkip map[string]int64
	}{
		{name: "empty", file: nil, wantErr: ErrFormat},
		{name: "text", file: []byte("hello, world\n"), wantErr: ErrFormat},
		{name: "pcap header only", file: good[:24], wantSkip: map[string]int64{}},
		{name: "pcap cut inside a record", file: good[:len(good)-7], wantSkip: map[string]int64{SkipTruncatedFile: 1, SkipMalformedPacket: 0}},
		{name: "pcapng cut inside a block", file: goodNg[:len(goodNg)-7], wantSkip: map[string]int64{SkipTruncatedFile: 1, SkipMalformedPacket: 0}},
		{name: "pcap record over the size limit", file: corrupt, anyErr: true, wantSkip: map[string]int64{}},
		{name: "pcapng record over its block", file: hugeNg, anyErr: true, wantSkip: map[string]int64{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sum, err := Read(context.Background(), bytes.NewReader(tc.file), Config{Service: BySourceIP}, func(flowmodel.Flow) error { return nil })
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.anyErr && err == nil:
				t.Fatal("no error")
			case tc.wantErr == nil && !tc.anyErr && err != nil:
				t.Fatalf("err = %v", err)
			}
			for k, v := range tc.wantSkip {
				if sum.Skipped[k] != v {
					t.Errorf("skipped[%s] = %d, want %d (all: %v)", k, sum.Skipped[k], v, sum.Skipped)
				}
			}
		})
	}
}

// BenchmarkRead reads a capture of 500 HTTP connections (handshake, request, response,
// close) and 500 DNS exchanges.
func BenchmarkRead(b *testing.B) {
	sc := &capturetest.Builder{T: b}
	for i := range 500 {
		client := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		sc.UDP(at(i*10), ap(client, 40000), ap(resolver, 53), sc.DNS(&layers.DNS{ID: uint16(i), RD: true,
			Questions: []layers.DNSQuestion{{Name: []byte("api.example.com"), Type: layers.DNSTypeA, Class: layers.DNSClassIN}}}))
		c := sc.Conn(ap(client, 41000), ap(apiIP, 80))
		c.Handshake(at(i*10 + 1))
		c.Send(at(i*10+4), true, []byte(postRequest), 1400)
		c.Send(at(i*10+5), false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), 1400)
		c.Close(at(i*10 + 6))
	}
	file := sc.Pcap()
	b.ReportAllocs()
	b.SetBytes(int64(len(file)))
	for b.Loop() {
		sum, err := Read(context.Background(), bytes.NewReader(file), Config{Service: BySourceIP}, func(flowmodel.Flow) error { return nil })
		if err != nil || sum.HTTPRequests != 500 {
			b.Fatalf("%d requests, error %v", sum.HTTPRequests, err)
		}
	}
	b.ReportMetric(float64(len(sc.Packets)*b.N)/b.Elapsed().Seconds(), "packets/s")
}
