package capture

import (
	"bufio"
	"bytes"
	"net/http"
	"slices"
	"strings"
	"time"
)

// httpRequest is what the capture keeps of one HTTP/1.x request.
type httpRequest struct {
	Time        time.Time // timestamp of the packet that carried the request's first byte
	Method      string
	Path        string // as sent: path and query (for absolute-form, the URL's path and query)
	Host        string // Host header or absolute-form authority, as sent
	HeaderKeys  []string
	ContentType string
	BodyBytes   int64 // Content-Length, or the decoded size of a chunked body; -1 if unknown
}

type httpState uint8

const (
	httpHeaders   httpState = iota // accumulating a header block
	httpBody                       // skipping a Content-Length body
	httpChunkSize                  // reading a chunk-size line
	httpChunkData                  // skipping chunk data
	httpChunkCRLF                  // reading the line end after chunk data
	httpTrailer                    // reading trailer lines up to the empty one
	httpDone                       // not HTTP any more: ignore the rest
)

// maxChunkLine bounds a chunk-size line (with extensions) or a trailer line.
const maxChunkLine = 4096

// httpParser reads the client half of an HTTP/1.x connection as it arrives, without
// blocking: it buffers one header block at a time (at most max bytes), hands it to
// net/http's ReadRequest, then skips the body by its framing. Memory per parser is bounded
// by max.
type httpParser struct {
	max       int
	onRequest func(*httpRequest)
	onSkip    func(reason, detail string)

	state     httpState
	buf       []byte
	start     time.Time
	remaining int64        // body bytes left (httpBody, httpChunkData)
	pending   *httpRequest // a chunked request, emitted once its body is read
	chunked   int64        // decoded size of the pending chunked body
	line      int          // characters (CR excluded) of the current chunk-size or trailer line
	lineSize  int64        // chunk size being parsed
	lineBad   bool         // the chunk-size line has a bad digit
	inExt     bool         // past the chunk size, in a chunk extension
	after     httpState    // state after the current body: httpHeaders or httpDone
}

func (p *httpParser) feed(b []byte, seen time.Time) {
	for len(b) > 0 && p.state != httpDone {
		switch p.state {
		case httpHeaders:
			b = p.headers(b, seen)
		case httpBody:
			n := min(int64(len(b)), p.remaining)
			p.remaining -= n
			b = b[n:]
			if p.remaining == 0 {
				p.state = p.after
			}
		case httpChunkData:
			n := min(int64(len(b)), p.remaining)
			p.remaining -= n
			p.chunked += n
			b = b[n:]
			if p.remaining == 0 {
				p.state, p.line = httpChunkCRLF, 0
			}
		default:
			b = p.chunkFraming(b)
		}
	}
}

// headers accumulates a header block and parses it once complete; it returns the bytes
// that follow the block.
func (p *httpParser) headers(b []byte, seen time.Time) []byte {
	if len(p.buf) == 0 {
		// Tolerate empty lines between requests (RFC 9112, section 2.2).
		b = bytes.TrimLeft(b, "\r\n")
		if len(b) == 0 {
			return nil
		}
		if c := b[0]; c < 'A' || c > 'Z' {
			p.fail(SkipHTTPMalformed, "request does not start with a method")
			return nil
		}
		p.start = seen
	}
	from := max(0, len(p.buf)-3)
	take := min(len(b), p.max-len(p.buf))
	p.buf = append(p.buf, b[:take]...)
	end := bytes.Index(p.buf[from:], []byte("\r\n\r\n"))
	if end < 0 {
		if len(p.buf) >= p.max {
			p.fail(SkipHTTPHeaderTooLarge, "header block over the limit")
		}
		return nil
	}
	end += from + 4
	rest := b[take-(len(p.buf)-end):]
	block := p.buf[:end]
	req, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(block), len(block)))
	if err != nil {
		p.fail(SkipHTTPMalformed, err.Error())
		return nil
	}
	p.request(req, block)
	p.buf = p.buf[:0]
	if cap(p.buf) > 4096 {
		p.buf = nil // do not keep a large buffer per idle connection
	}
	return rest
}

// request emits a parsed request, or keeps it pending until its chunked body is read, and
// sets the body state.
func (p *httpParser) request(req *http.Request, block []byte) {
	r := &httpRequest{
		Time:        p.start,
		Method:      req.Method,
		Path:        req.RequestURI,
		Host:        req.Host,
		HeaderKeys:  headerKeys(block),
		ContentType: req.Header.Get("Content-Type"),
		BodyBytes:   req.ContentLength,
	}
	if req.URL != nil && req.URL.Host != "" {
		r.Path = req.URL.RequestURI() // absolute-form: keep path and query only
	}
	p.after = httpHeaders
	// After an upgrade (WebSocket, h2c), CONNECT, or the HTTP/2 preface, the bytes that
	// follow are not HTTP/1.x requests.
	if req.Method == http.MethodConnect || req.Header.Get("Upgrade") != "" || req.Proto == "HTTP/2.0" {
		p.after = httpDone
	}
	if req.Proto == "HTTP/2.0" {
		p.state = httpDone
		return
	}
	chunked := len(req.TransferEncoding) > 0
	if !chunked {
		if r.BodyBytes < 0 {
			r.BodyBytes = 0 // a request without Content-Length or chunking has no body
		}
		p.onRequest(r)
		p.remaining = r.BodyBytes
		p.state = httpBody
		if p.remaining == 0 {
			p.state = p.after
		}
		return
	}
	p.pending, p.chunked = r, 0
	p.state, p.line, p.lineSize, p.lineBad, p.inExt = httpChunkSize, 0, 0, false, false
}

// chunkFraming reads chunk-size lines, chunk line ends and trailers; it returns the bytes
// that follow what it consumed. Line ends may be CRLF or a bare LF.
func (p *httpParser) chunkFraming(b []byte) []byte {
	for i, c := range b {
		switch c {
		case '\r':
			continue
		case '\n':
		default:
			p.line++
			if p.line > maxChunkLine {
				p.fail(SkipHTTPMalformed, "chunk line too long")
				return nil
			}
			if p.state == httpChunkSize {
				p.chunkDigit(c)
			}
			continue
		}
		// The end of a line of p.line characters.
		switch p.state {
		case httpChunkSize:
			if p.lineBad || p.line == 0 {
				p.fail(SkipHTTPMalformed, "bad chunk size")
				return nil
			}
			if p.lineSize == 0 {
				p.state = httpTrailer
				break
			}
			p.state, p.remaining, p.line = httpChunkData, p.lineSize, 0
			return b[i+1:]
		case httpChunkCRLF:
			p.state, p.lineSize, p.lineBad, p.inExt = httpChunkSize, 0, false, false
		case httpTrailer:
			if p.line > 0 {
				break // a trailer field: read on to the empty line
			}
			p.emitPending(p.chunked)
			p.state = p.after
			return b[i+1:]
		}
		p.line = 0
	}
	return nil
}

func (p *httpParser) chunkDigit(c byte) {
	if p.inExt {
		return
	}
	var v byte
	switch {
	case '0' <= c && c <= '9':
		v = c - '0'
	case 'a' <= c && c <= 'f':
		v = c - 'a' + 10
	case 'A' <= c && c <= 'F':
		v = c - 'A' + 10
	case c == ';' || c == ' ' || c == '\t':
		p.inExt = true
		return
	default:
		p.lineBad = true
		return
	}
	if p.lineSize > 1<<40 {
		p.lineBad = true
		return
	}
	p.lineSize = p.lineSize<<4 | int64(v)
}

// gap tells the parser that n bytes of the stream were lost (n < 0: an unknown number).
func (p *httpParser) gap(n int) {
	switch {
	case p.state == httpDone:
	case p.state == httpBody && n > 0 && int64(n) <= p.remaining:
		// Lost body bytes of known length: still in step.
		p.remaining -= int64(n)
		if p.remaining == 0 {
			p.state = p.after
		}
	case p.state == httpHeaders && len(p.buf) == 0:
		// Between requests: the next bytes should start a request; headers() checks.
	default:
		p.fail(SkipTCPGap, "bytes missing inside an HTTP request")
	}
}

// end is called when the stream ends.
func (p *httpParser) end() {
	switch {
	case p.pending != nil:
		p.emitPending(-1) // the request was seen; only its body size is unknown
	case p.state == httpHeaders && len(p.buf) > 0:
		p.onSkip(SkipHTTPIncomplete, "stream ends inside a request header")
	}
	p.state, p.buf = httpDone, nil
}

func (p *httpParser) fail(reason, detail string) {
	if p.pending != nil {
		p.emitPending(-1)
	}
	p.onSkip(reason, detail)
	p.state, p.buf = httpDone, nil
}

// emitPending emits the pending chunked request with a body of bodyBytes (-1: unknown).
func (p *httpParser) emitPending(bodyBytes int64) {
	r := p.pending
	r.BodyBytes = bodyBytes
	p.pending = nil
	p.onRequest(r)
}

// headerKeys returns the lower-case, sorted, distinct field names of a header block as sent
// (net/http moves Host and Transfer-Encoding out of Request.Header), without Host, which
// HTTP/2 and Envoy carry as the :authority pseudo-header.
func headerKeys(block []byte) []string {
	var keys []string
	lines := bytes.Split(block, []byte("\n"))
	for _, line := range lines[1:] {
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue // empty, or an obsolete continuation line
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			continue
		}
		k := strings.ToLower(string(bytes.TrimSpace(line[:i])))
		if k == "host" {
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}
