package capture

import (
	"bytes"
	"net/netip"
	"slices"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/tcpassembly"
)

// connKey names a connection or UDP conversation whichever way its packets go: a is the
// lower endpoint.
type connKey struct{ a, b netip.AddrPort }

func makeKey(x, y netip.AddrPort) connKey {
	if c := x.Addr().Compare(y.Addr()); c < 0 || (c == 0 && x.Port() < y.Port()) {
		return connKey{x, y}
	}
	return connKey{y, x}
}

// tcpConn is one TCP connection, both directions.
type tcpConn struct {
	key            connKey
	client, server netip.AddrPort
	oriented       bool      // client and server are known
	start          time.Time // the SYN's timestamp, else the first packet's
	last           time.Time
	emitted        bool    // a request or hello was emitted for it
	fin            [2]bool // FIN seen from key.a, from key.b
	done           bool
}

func (c *tcpConn) orient(client, server netip.AddrPort) {
	c.client, c.server, c.oriented = client, server, true
}

func sortConns(cs []*tcpConn) {
	slices.SortFunc(cs, func(x, y *tcpConn) int {
		if c := x.start.Compare(y.start); c != 0 {
			return c
		}
		if c := x.key.a.Compare(y.key.a); c != 0 {
			return c
		}
		return x.key.b.Compare(y.key.b)
	})
}

// tcpPacket tracks the connection of a segment and hands the segment to the reassembler.
func (d *Decoder) tcpPacket(src, dst netip.AddrPort, netFlow gopacket.Flow, ts time.Time, truncated bool) {
	t := &d.tcp
	if truncated && len(t.Payload) > 0 {
		// The payload is cut short: the bytes that were captured would be taken for the
		// whole segment. Pass the flags alone; the stream sees a gap.
		d.skip(SkipTruncatedPacket, "TCP payload")
		t.Payload = nil
	}
	key := makeKey(src, dst)
	c := d.conns[key]
	if c == nil {
		if !t.SYN && len(t.Payload) == 0 {
			// An ACK, FIN or RST of a connection not (or no longer) tracked: nothing to
			// learn, but the reassembler may still hold one of its directions.
			d.guardTCP(func() { d.asm.AssembleWithTimestamp(netFlow, t, ts) })
			return
		}
		if len(d.conns) >= d.cfg.MaxStreams {
			d.skip(SkipTCPStreamLimit, "")
			return
		}
		c = &tcpConn{key: key, start: ts, last: ts}
		d.conns[key] = c
	}
	if ts.After(c.last) {
		c.last = ts
	}
	if t.SYN && !c.oriented {
		if t.ACK {
			c.orient(dst, src) // a SYN-ACK: the SYN was missed
		} else {
			c.orient(src, dst)
			c.start = ts
		}
	}
	if t.FIN {
		c.fin[boolIndex(src != key.a)] = true
	}
	d.cur, d.curSrc, d.curDst = c, src, dst
	d.guardTCP(func() { d.asm.AssembleWithTimestamp(netFlow, t, ts) })
	d.cur = nil
	if t.RST || (c.fin[0] && c.fin[1]) {
		d.finish(c)
	}
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

// finish forgets a connection. If nothing was emitted for it, it is one flow to its
// server, at the time it started.
func (d *Decoder) finish(c *tcpConn) {
	if c.done {
		return
	}
	c.done = true
	delete(d.conns, c.key)
	if c.emitted {
		return
	}
	if !c.oriented && !orientByPort(c) {
		d.skip(SkipTCPNoHandshake, c.key.a.String()+" "+c.key.b.String())
		return
	}
	f := d.flow(c.client, c.server, "", c.start)
	d.deliver(&f, &d.sum.TCPConnections)
}

// orientByPort guesses the server of a connection seen without its handshake: the side on
// a port below the ephemeral range (32768 and up on Linux) when the other is in it.
func orientByPort(c *tcpConn) bool {
	const ephemeral = 32768
	a, b := c.key.a, c.key.b
	switch {
	case a.Port() < ephemeral && b.Port() >= ephemeral:
		c.orient(b, a)
	case b.Port() < ephemeral && a.Port() >= ephemeral:
		c.orient(a, b)
	default:
		return false
	}
	return true
}

// streamFactory makes the reassembler's streams: one per direction of a connection.
type streamFactory struct{ d *Decoder }

func (f streamFactory) New(_, _ gopacket.Flow) tcpassembly.Stream {
	d := f.d
	if d.cur == nil {
		return discardStream{}
	}
	return &halfStream{d: d, c: d.cur, src: d.curSrc, dst: d.curDst}
}

type discardStream struct{}

func (discardStream) Reassembled([]tcpassembly.Reassembly) {}
func (discardStream) ReassemblyComplete()                  {}

type halfKind uint8

const (
	halfSniff  halfKind = iota // deciding what the first bytes are
	halfHTTP                   // the client of an HTTP/1.x connection
	halfTLS                    // the client of a TLS connection
	halfIgnore                 // anything else: the server side, or an opaque protocol
)

// sniffLen is how many leading bytes decide what a stream is.
const sniffLen = 24

// halfStream is one direction of a connection: from src to dst.
type halfStream struct {
	d        *Decoder
	c        *tcpConn
	src, dst netip.AddrPort

	kind      halfKind
	sniff     []byte
	sniffTime time.Time
	http      httpParser
	tls       helloParser
}

func (h *halfStream) Reassembled(rs []tcpassembly.Reassembly) {
	for i := range rs {
		r := &rs[i]
		if r.Skip != 0 {
			h.gap(r.Skip)
		}
		if len(r.Bytes) > 0 {
			h.data(r.Bytes, r.Seen)
		}
	}
}

func (h *halfStream) ReassemblyComplete() {
	switch h.kind {
	case halfHTTP:
		h.http.end()
	case halfTLS:
		h.tls.end()
	}
	h.kind = halfIgnore
}

// gap: n bytes were lost before the next ones (n < 0: the stream's start was not seen).
func (h *halfStream) gap(n int) {
	switch h.kind {
	case halfSniff:
		h.sniff = h.sniff[:0]
	case halfHTTP:
		h.http.gap(n)
	case halfTLS:
		h.tls.gap()
		h.kind = halfIgnore
	}
}

func (h *halfStream) data(b []byte, seen time.Time) {
	switch h.kind {
	case halfHTTP:
		h.http.feed(b, seen)
	case halfTLS:
		h.tls.feed(b, seen)
	case halfSniff:
		h.sniffData(b, seen)
	}
}

func (h *halfStream) sniffData(b []byte, seen time.Time) {
	c := h.c
	if c.oriented && h.src != c.client {
		h.kind = halfIgnore // the server's side
		return
	}
	if len(h.sniff) == 0 {
		h.sniffTime = seen
	}
	take := min(sniffLen-len(h.sniff), len(b))
	h.sniff = append(h.sniff, b[:take]...)
	kind, sure := classify(h.sniff)
	if !sure && len(h.sniff) < sniffLen {
		return // wait for more bytes
	}
	head, headTime := h.sniff, h.sniffTime
	h.sniff = nil
	switch kind {
	case classHTTPRequest:
		h.kind = halfHTTP
		h.http = httpParser{max: h.d.cfg.MaxHeaderBytes, onRequest: h.request, onSkip: h.d.skip}
	case classTLSClient:
		h.kind = halfTLS
		h.tls = helloParser{onHello: h.hello, onSkip: h.d.skip}
	case classServer:
		if !c.oriented {
			c.orient(h.dst, h.src)
		}
		h.kind = halfIgnore
		return
	default:
		h.kind = halfIgnore
		return
	}
	if !c.oriented {
		c.orient(h.src, h.dst)
	}
	h.data(head, headTime)
	h.data(b[take:], seen)
}

func (h *halfStream) request(r *httpRequest) {
	h.c.emitted = true
	f := h.d.flow(h.src, h.dst, r.Host, r.Time)
	f.Method, f.Path, f.HeaderKeys, f.ContentType, f.RequestBytes = r.Method, r.Path, r.HeaderKeys, r.ContentType, r.BodyBytes
	h.d.deliver(&f, &h.d.sum.HTTPRequests)
}

func (h *halfStream) hello(serverName string, t time.Time) {
	h.c.emitted = true
	f := h.d.flow(h.src, h.dst, serverName, t)
	h.d.deliver(&f, &h.d.sum.TLSHellos)
}

type streamClass uint8

const (
	classOpaque      streamClass = iota
	classHTTPRequest             // "METHOD "
	classTLSClient               // a TLS handshake record holding a ClientHello
	classServer                  // an HTTP response or a TLS ServerHello: the other side is the client
)

// classify decides what a stream is from its first bytes. sure is false while more bytes
// could change the answer.
func classify(b []byte) (class streamClass, sure bool) {
	if len(b) == 0 {
		return classOpaque, false
	}
	switch c := b[0]; {
	case c == tlsRecordHandshake:
		if len(b) < 6 {
			return classOpaque, false
		}
		switch {
		case b[1] != 3:
			return classOpaque, true
		case b[5] == tlsClientHello:
			return classTLSClient, true
		case b[5] == 2: // ServerHello
			return classServer, true
		}
		return classOpaque, true
	case 'A' <= c && c <= 'Z':
		const response = "HTTP/"
		if len(b) < len(response) && bytes.HasPrefix([]byte(response), b) {
			return classOpaque, false
		}
		if bytes.HasPrefix(b, []byte(response)) {
			return classServer, true
		}
		for i, c := range b {
			switch {
			case c == ' ' && i > 0:
				return classHTTPRequest, true
			case 'A' <= c && c <= 'Z', c == '-', c == '_':
			default:
				return classOpaque, true
			}
		}
		return classOpaque, false
	}
	return classOpaque, true
}

var (
	_ tcpassembly.StreamFactory = streamFactory{}
	_ tcpassembly.Stream        = (*halfStream)(nil)
)
