package capture

import (
	"errors"
	"time"
)

// TLS framing limits (RFC 8446, section 5.1).
const (
	tlsRecordHandshake = 22
	tlsClientHello     = 1
	tlsMaxRecord       = 16384 + 2048 // the largest record a peer may send
	maxHello           = 64 << 10     // a ClientHello larger than this is not read
)

// helloParser reads a TLS ClientHello from the client half of a connection as it arrives:
// it gathers handshake records until the first handshake message is complete, then reads
// its server name. Memory is bounded by maxHello plus one record.
type helloParser struct {
	onHello func(serverName string, t time.Time)
	onSkip  func(reason, detail string)

	raw   []byte // record bytes not yet unpacked
	msg   []byte // handshake bytes unpacked from records
	start time.Time
	done  bool
}

func (p *helloParser) feed(b []byte, seen time.Time) {
	if p.done || len(b) == 0 {
		return
	}
	if len(p.raw) == 0 && len(p.msg) == 0 {
		p.start = seen
	}
	if len(p.raw)+len(b) > maxHello+5+tlsMaxRecord {
		p.fail(SkipTLSMalformed, "ClientHello too large")
		return
	}
	p.raw = append(p.raw, b...)
	for len(p.raw) >= 5 {
		if p.raw[0] != tlsRecordHandshake || p.raw[1] != 3 {
			p.fail(SkipTLSMalformed, "not a TLS handshake record")
			return
		}
		n := int(p.raw[3])<<8 | int(p.raw[4])
		if n == 0 || n > tlsMaxRecord {
			p.fail(SkipTLSMalformed, "bad TLS record length")
			return
		}
		if len(p.raw) < 5+n {
			return
		}
		p.msg = append(p.msg, p.raw[5:5+n]...)
		p.raw = p.raw[5+n:]
		if len(p.msg) < 4 {
			continue
		}
		if p.msg[0] != tlsClientHello {
			p.fail(SkipTLSMalformed, "first handshake message is not a ClientHello")
			return
		}
		size := int(p.msg[1])<<16 | int(p.msg[2])<<8 | int(p.msg[3])
		if size > maxHello {
			p.fail(SkipTLSMalformed, "ClientHello too large")
			return
		}
		if len(p.msg) < 4+size {
			continue
		}
		name, err := serverName(p.msg[4 : 4+size])
		if err != nil {
			p.fail(SkipTLSMalformed, err.Error())
			return
		}
		p.done, p.raw, p.msg = true, nil, nil
		p.onHello(name, p.start)
		return
	}
}

// gap tells the parser that bytes of the stream were lost.
func (p *helloParser) gap() {
	if !p.done && (len(p.raw) > 0 || len(p.msg) > 0) {
		p.fail(SkipTLSIncomplete, "bytes missing inside a ClientHello")
	}
}

// end is called when the stream ends.
func (p *helloParser) end() {
	if !p.done && (len(p.raw) > 0 || len(p.msg) > 0) {
		p.fail(SkipTLSIncomplete, "stream ends inside a ClientHello")
	}
	p.done = true
}

func (p *helloParser) fail(reason, detail string) {
	p.done, p.raw, p.msg = true, nil, nil
	p.onSkip(reason, detail)
}

var errBadHello = errors.New("malformed ClientHello")

// serverName returns the host_name of the server_name extension (RFC 6066, section 3) of a
// ClientHello body (the handshake message without its 4-byte header); "" when absent.
func serverName(body []byte) (string, error) {
	c := cursor(body)
	c.skip(2 + 32) // legacy_version, random
	c.vec(1)       // legacy_session_id
	c.vec(2)       // cipher_suites
	c.vec(1)       // legacy_compression_methods
	if !c.ok() {
		return "", errBadHello
	}
	if len(c) == 0 {
		return "", nil // no extensions (TLS 1.0 style)
	}
	exts := c.vec(2)
	if !c.ok() {
		return "", errBadHello
	}
	for len(exts) > 0 {
		typ := exts.u16()
		data := exts.vec(2)
		if !exts.ok() {
			return "", errBadHello
		}
		if typ != 0 { // server_name
			continue
		}
		list := data.vec(2)
		for len(list) > 0 {
			nameType := list.u8()
			name := list.vec(2)
			if !list.ok() {
				return "", errBadHello
			}
			if nameType == 0 { // host_name
				return string(name), nil
			}
		}
		if !data.ok() {
			return "", errBadHello
		}
		return "", nil
	}
	return "", nil
}

// cursor reads big-endian fields from a byte slice. A read past the end makes it nil for
// good, while a cursor read to its end exactly is empty but not nil.
type cursor []byte

// ok reports whether no read went past the end.
func (c *cursor) ok() bool { return *c != nil }

func (c *cursor) take(n int) cursor {
	if *c == nil || n > len(*c) {
		*c = nil
		return nil
	}
	v := (*c)[:n:n]
	*c = (*c)[n:]
	return v
}

func (c *cursor) skip(n int) { c.take(n) }

func (c *cursor) u8() int {
	v := c.take(1)
	if len(v) < 1 {
		return -1
	}
	return int(v[0])
}

func (c *cursor) u16() int {
	v := c.take(2)
	if len(v) < 2 {
		return -1
	}
	return int(v[0])<<8 | int(v[1])
}

// vec reads a vector with a length prefix of lenBytes (1 or 2) bytes.
func (c *cursor) vec(lenBytes int) cursor {
	var n int
	if lenBytes == 1 {
		n = c.u8()
	} else {
		n = c.u16()
	}
	if n < 0 {
		return nil
	}
	return c.take(n)
}
