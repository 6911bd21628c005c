package capture

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// parseHTTP feeds stream to a parser in pieces of size bytes (all at once when size is 0),
// each piece a millisecond after the previous, and returns the requests and skip reasons.
func parseHTTP(stream string, size int, maxHeader int) ([]httpRequest, []string) {
	var reqs []httpRequest
	var skips []string
	p := httpParser{
		max:       maxHeader,
		onRequest: func(r *httpRequest) { reqs = append(reqs, *r) },
		onSkip:    func(reason, _ string) { skips = append(skips, reason) },
	}
	if size == 0 {
		size = len(stream)
	}
	b := []byte(stream)
	for i := 0; len(b) > 0; i++ {
		n := min(size, len(b))
		p.feed(b[:n], at(i))
		b = b[n:]
	}
	p.end()
	return reqs, skips
}

func TestHTTPParser(t *testing.T) {
	get := httpRequest{Time: at(0), Method: "GET", Path: "/a?b=1", Host: "x.example", HeaderKeys: []string{"accept"}, BodyBytes: 0}
	cases := []struct {
		name   string
		stream string
		max    int
		want   []httpRequest
		skips  []string
	}{
		{
			name:   "one GET",
			stream: "GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nAccept: */*\r\n\r\n",
			want:   []httpRequest{get},
		},
		{
			name:   "pipelined, with empty lines between",
			stream: "GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nAccept: */*\r\n\r\n\r\nPOST /p HTTP/1.1\r\nHost: x.example\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabcGET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nAccept: */*\r\n\r\n",
			want: []httpRequest{
				get,
				{Time: at(0), Method: "POST", Path: "/p", Host: "x.example", HeaderKeys: []string{"content-length", "content-type"}, ContentType: "text/plain", BodyBytes: 3},
				get,
			},
		},
		{
			name:   "chunked with extension and trailer, bare LF line ends",
			stream: "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nA;name=v\nabcdefghij\n1\r\nk\r\n0\nTrailer-A: 1\nTrailer-B: 2\n\n",
			want:   []httpRequest{{Time: at(0), Method: "PUT", Path: "/c", Host: "h", HeaderKeys: []string{"transfer-encoding"}, BodyBytes: 11}},
		},
		{
			name:   "absolute form through a proxy",
			stream: "GET http://api.example.com:8080/v1/x?q=2 HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n",
			want:   []httpRequest{{Time: at(0), Method: "GET", Path: "/v1/x?q=2", Host: "api.example.com:8080", BodyBytes: 0}},
		},
		{
			name:   "HTTP/1.0 without Host, duplicate header names",
			stream: "GET / HTTP/1.0\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
			want:   []httpRequest{{Time: at(0), Method: "GET", Path: "/", HeaderKeys: []string{"x-a"}, BodyBytes: 0}},
		},
		{
			name:   "upgrade ends parsing",
			stream: "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x85garbage frames",
			want:   []httpRequest{{Time: at(0), Method: "GET", Path: "/ws", Host: "h", HeaderKeys: []string{"connection", "upgrade"}, BodyBytes: 0}},
		},
		{
			name:   "HTTP/2 preface is not a request",
			stream: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
		},
		{
			name:   "stream ends inside a chunked body: size unknown",
			stream: "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc",
			want:   []httpRequest{{Time: at(0), Method: "POST", Path: "/u", Host: "h", HeaderKeys: []string{"transfer-encoding"}, BodyBytes: -1}},
		},
		{
			name:   "bad chunk size",
			stream: "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
			want:   []httpRequest{{Time: at(0), Method: "POST", Path: "/u", Host: "h", HeaderKeys: []string{"transfer-encoding"}, BodyBytes: -1}},
			skips:  []string{SkipHTTPMalformed},
		},
		{
			name:   "not HTTP after a request",
			stream: "GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nAccept: */*\r\n\r\n\x00\x01binary",
			want:   []httpRequest{get},
			skips:  []string{SkipHTTPMalformed},
		},
		{
			name:   "conflicting Content-Length",
			stream: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
			skips:  []string{SkipHTTPMalformed},
		},
		{
			name:   "header block over the limit",
			stream: "GET / HTTP/1.1\r\nX: " + strings.Repeat("y", 200) + "\r\n\r\n",
			max:    128,
			skips:  []string{SkipHTTPHeaderTooLarge},
		},
		{
			name:   "ends inside the header block",
			stream: "GET / HTTP/1.1\r\nHost: h\r\n",
			skips:  []string{SkipHTTPIncomplete},
		},
	}
	for _, tc := range cases {
		max := tc.max
		if max == 0 {
			max = DefaultMaxHeaderBytes
		}
		// Every way of cutting the stream gives the same requests; the time is that of the
		// piece holding each request's first byte.
		for _, size := range []int{0, 1, 2, 3, 7, 64} {
			t.Run(tc.name+"/pieces of "+itoa(size), func(t *testing.T) {
				got, skips := parseHTTP(tc.stream, size, max)
				want := tc.want
				if size != 0 {
					want = withTimes(tc.stream, size, want)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("requests:\n got %+v\nwant %+v", got, want)
				}
				if !reflect.DeepEqual(skips, tc.skips) {
					t.Errorf("skips %v, want %v", skips, tc.skips)
				}
			})
		}
	}
}

// withTimes sets each wanted request's time to that of the piece its request line starts in.
func withTimes(stream string, size int, want []httpRequest) []httpRequest {
	if want == nil {
		return nil
	}
	out := make([]httpRequest, len(want))
	from := 0
	for i, r := range want {
		line := r.Method + " "
		j := strings.Index(stream[from:], line) + from
		out[i] = r
		out[i].Time = at(j / size)
		from = j + len(line)
	}
	return out
}

func itoa(n int) string {
	if n == 0 {
		return "all"
	}
	return strconv.Itoa(n)
}

func TestHTTPParserGaps(t *testing.T) {
	var reqs []httpRequest
	var skips []string
	newParser := func() *httpParser {
		reqs, skips = nil, nil
		return &httpParser{max: 1024, onRequest: func(r *httpRequest) { reqs = append(reqs, *r) }, onSkip: func(reason, _ string) { skips = append(skips, reason) }}
	}
	ts := time.Unix(0, 0)

	// Bytes lost inside a body of known length: the parser stays in step.
	p := newParser()
	p.feed([]byte("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"), ts)
	p.gap(4)
	p.feed([]byte("xyzGET /next HTTP/1.1\r\n\r\n"), ts)
	if len(reqs) != 2 || reqs[1].Path != "/next" || len(skips) != 0 {
		t.Errorf("gap in body: requests %+v, skips %v; want 2 requests and no skip", reqs, skips)
	}

	// Bytes lost inside a header block: give up on the stream.
	p = newParser()
	p.feed([]byte("GET / HTTP/1.1\r\nHo"), ts)
	p.gap(10)
	p.feed([]byte("GET /next HTTP/1.1\r\n\r\n"), ts)
	if len(reqs) != 0 || !reflect.DeepEqual(skips, []string{SkipTCPGap}) {
		t.Errorf("gap in header: requests %+v, skips %v; want none and a tcp_gap", reqs, skips)
	}

	// A gap between requests: the next request is read.
	p = newParser()
	p.feed([]byte("GET /1 HTTP/1.1\r\n\r\n"), ts)
	p.gap(-1)
	p.feed([]byte("GET /2 HTTP/1.1\r\n\r\n"), ts)
	if len(reqs) != 2 || len(skips) != 0 {
		t.Errorf("gap between requests: requests %+v, skips %v; want 2 requests", reqs, skips)
	}
}
