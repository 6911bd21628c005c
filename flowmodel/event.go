package flowmodel

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Event is one flow event as written in JSONL files (see DESIGN.md, "Flow events"). Unknown
// fields are ignored, so other programs may add their own (a label, say).
type Event struct {
	Time        EventTime `json:"time"`
	Service     string    `json:"service"`
	Destination struct {
		IP   string `json:"ip,omitempty"`
		Port int    `json:"port,omitempty"`
		Host string `json:"host,omitempty"`
	} `json:"destination"`
	Request struct {
		Method    string            `json:"method,omitempty"`
		Path      string            `json:"path,omitempty"`
		Headers   map[string]string `json:"headers,omitempty"`
		BodyBytes *int64            `json:"body_bytes,omitempty"`
		// Body is the request body (or its start) when the recorder kept it: the parameter
		// value models judge its form or JSON fields, as they judge a body Envoy buffers.
		Body          string `json:"body,omitempty"`
		BodyTruncated bool   `json:"body_truncated,omitempty"`
	} `json:"request"`
	Response struct {
		Status    int    `json:"status,omitempty"`
		BodyBytes *int64 `json:"body_bytes,omitempty"`
	} `json:"response"`
}

// EventTime is an event's time: RFC 3339 text or Unix seconds (a number, fractions allowed).
type EventTime struct{ time.Time }

// UnmarshalJSON accepts an RFC 3339 string or a number of Unix seconds.
func (t *EventTime) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return fmt.Errorf("time %q is not RFC 3339", s)
		}
		t.Time = v
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("time must be RFC 3339 text or Unix seconds, got %s", clip(b))
	}
	if math.IsNaN(f) || f < 0 || f > 1e11 {
		return fmt.Errorf("time %v is out of range for Unix seconds", f)
	}
	sec, frac := math.Modf(f)
	t.Time = time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC()
	return nil
}

// MarshalJSON writes RFC 3339 with nanoseconds.
func (t EventTime) MarshalJSON() ([]byte, error) {
	return json.Marshal(t.Time.UTC().Format(time.RFC3339Nano))
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// ParseEvent decodes one JSONL line into a Flow.
func ParseEvent(line []byte) (Flow, error) {
	var e Event
	if err := json.Unmarshal(line, &e); err != nil {
		return Flow{}, err
	}
	return e.Flow()
}

// Flow converts and checks the event. Errors name the offending field.
func (e *Event) Flow() (Flow, error) {
	var errs []error
	f := Flow{Time: e.Time.Time, Service: strings.TrimSpace(e.Service), RequestBytes: -1, ResponseBytes: -1, Source: "event"}
	if e.Time.IsZero() {
		errs = append(errs, errors.New("time is required"))
	}
	if f.Service == "" {
		errs = append(errs, errors.New("service is required"))
	}
	d := e.Destination
	if d.IP == "" && d.Host == "" {
		errs = append(errs, errors.New("destination.ip or destination.host is required"))
	}
	if d.IP != "" {
		a, err := netip.ParseAddr(strings.Trim(d.IP, "[]"))
		if err != nil {
			errs = append(errs, fmt.Errorf("destination.ip %q is not an IP address", clip([]byte(d.IP))))
		}
		f.Destination.IP = NormalizeIP(a)
	}
	if d.Port < 0 || d.Port > math.MaxUint16 {
		errs = append(errs, fmt.Errorf("destination.port %d is out of range", d.Port))
	} else {
		f.Destination.Port = uint16(d.Port)
	}
	if d.Host != "" {
		h, err := ParseDestination(d.Host)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("destination.host: %w", err))
		case h.IP.IsValid():
			// An IP literal as host: it is the destination IP, unless one was given.
			if !f.Destination.IP.IsValid() {
				f.Destination.IP = h.IP
			}
		default:
			f.Destination.Host = h.Host
			if f.Destination.Port == 0 {
				f.Destination.Port = h.Port
			}
		}
	}
	f.Method = e.Request.Method
	f.Path = e.Request.Path
	if len(e.Request.Headers) > 0 {
		f.HeaderKeys = make([]string, 0, len(e.Request.Headers))
		for k, v := range e.Request.Headers {
			k = strings.ToLower(k)
			if strings.HasPrefix(k, ":") {
				continue
			}
			f.HeaderKeys = append(f.HeaderKeys, k)
			if k == "content-type" {
				f.ContentType = v
			}
		}
		slices.Sort(f.HeaderKeys)
	}
	if b := e.Request.BodyBytes; b != nil {
		if *b < 0 {
			errs = append(errs, errors.New("request.body_bytes is negative"))
		}
		f.RequestBytes = *b
	}
	f.Body, f.BodyTruncated = e.Request.Body, e.Request.BodyTruncated
	if f.Body != "" && f.RequestBytes < 0 {
		f.RequestBytes = int64(len(f.Body))
	}
	if b := e.Response.BodyBytes; b != nil {
		if *b < 0 {
			errs = append(errs, errors.New("response.body_bytes is negative"))
		}
		f.ResponseBytes = *b
	}
	if s := e.Response.Status; s != 0 && (s < 100 || s > 999) {
		errs = append(errs, fmt.Errorf("response.status %d is out of range", s))
	}
	f.Status = e.Response.Status
	if err := errors.Join(errs...); err != nil {
		return Flow{}, err
	}
	return f, nil
}

// MaxEventLine is the longest line an EventReader accepts; longer lines are reported as bad
// and skipped.
const MaxEventLine = 1 << 20

// LineError is a bad line of an event stream.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// EventReader reads flow events line by line. A bad line yields a *LineError and the reader
// goes on with the next line; blank lines are skipped.
type EventReader struct {
	r    *bufio.Reader
	line int
	buf  []byte
	// Raw is the last line read, valid until the next call to Next.
	Raw []byte
}

// NewEventReader reads events from r.
func NewEventReader(r io.Reader) *EventReader {
	return &EventReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// Line returns the number of the last line read, counting from 1.
func (er *EventReader) Line() int { return er.line }

// Next returns the next event's flow, a *LineError for a bad line, or io.EOF at the end. Any
// other error is from the underlying reader.
func (er *EventReader) Next() (Flow, error) {
	for {
		line, tooLong, err := er.readLine()
		if err != nil {
			return Flow{}, err
		}
		if tooLong {
			return Flow{}, &LineError{Line: er.line, Err: fmt.Errorf("line longer than %d bytes", MaxEventLine)}
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		er.Raw = line
		f, err := ParseEvent(line)
		if err != nil {
			return Flow{}, &LineError{Line: er.line, Err: err}
		}
		return f, nil
	}
}

// readLine reads one line without its newline. A line over MaxEventLine is consumed and
// reported as too long.
func (er *EventReader) readLine() (line []byte, tooLong bool, err error) {
	er.buf = er.buf[:0]
	for {
		chunk, err := er.r.ReadSlice('\n')
		if len(er.buf)+len(chunk) <= MaxEventLine+1 {
			er.buf = append(er.buf, chunk...)
		} else {
			tooLong = true
		}
		switch {
		case err == nil:
			er.line++
			return bytes.TrimSuffix(er.buf, []byte{'\n'}), tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if len(er.buf) == 0 && !tooLong {
				return nil, false, io.EOF
			}
			er.line++
			return er.buf, tooLong, nil
		default:
			return nil, false, err
		}
	}
}
