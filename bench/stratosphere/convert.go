package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// record is one converted flow: a flow event (DESIGN.md) plus the Stratosphere label and
// where the flow came from. flowmodel.ParseEvent ignores the extra fields.
type record struct {
	flowmodel.Event
	// Proto is the transport protocol of a conn.log flow ("tcp", "udp", "icmp").
	Proto string `json:"proto,omitempty"`
	// Label is Zeek's label lower-cased: "benign", "malicious" or "background".
	Label         string `json:"label"`
	DetailedLabel string `json:"detailed_label,omitempty"`
	Capture       string `json:"capture"`
	ZeekLog       string `json:"zeek_log"`
	ZeekUID       string `json:"zeek_uid,omitempty"`
}

// stats counts what a conversion did, per capture.
type stats struct {
	Capture     string
	HTTP, Conn  int // flows written from each log
	ConnCovered int // conn.log rows skipped because http.log has their requests
	SNI         int // conn.log flows given a host from ssl.log's server_name
	BadHost     int // Host headers that are not host names, dropped
	BadRow      int // rows without a usable originator or responder address, skipped
	// Start is the capture's start: the time of the first row written to its conn.log (else
	// http.log). Zeek writes a connection when it ends, so connections that began before the
	// capture (and have earlier times) come later in the file.
	Start time.Time
}

func (s stats) String() string {
	return fmt.Sprintf("%s (starts %s): %d http flows, %d conn flows (%d conn rows covered by http), %d with SNI host, %d bad Host headers dropped, %d bad rows skipped",
		s.Capture, s.Start.Format(time.RFC3339), s.HTTP, s.Conn, s.ConnCovered, s.SNI, s.BadHost, s.BadRow)
}

// convertDir converts every capture below dir (each a folder of Zeek logs) and returns the
// flows sorted by time; flows of equal time keep their capture, log and row order.
func convertDir(dir string) ([]record, []stats, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("stratosphere data: %w", err)
	}
	var all []record
	var st []stats
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		recs, s, err := convertCapture(filepath.Join(dir, e.Name()), e.Name())
		if errors.Is(err, errNoLogs) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		all = append(all, recs...)
		st = append(st, s)
	}
	if len(st) == 0 {
		return nil, nil, fmt.Errorf("stratosphere data: no capture with an http or conn log below %s", dir)
	}
	slices.SortStableFunc(all, func(a, b record) int { return a.Time.Compare(b.Time.Time) })
	return all, st, nil
}

var errNoLogs = errors.New("no http or conn log")

// openLog reads name.log.labeled (or name.log) in dir; it returns nil when neither exists.
func openLog(dir, name string) (*zeekLog, error) {
	for _, f := range []string{name + ".log.labeled", name + ".log"} {
		b, err := os.Open(filepath.Join(dir, f))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		l, err := readZeek(b)
		b.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
		}
		return l, nil
	}
	return nil, nil
}

// convertCapture converts one capture: every http.log row is an HTTP flow; every conn.log
// row whose connection has no http.log row is a plain destination flow, named by the SNI
// of its ssl.log row when there is one. The service is the originating host.
func convertCapture(dir, name string) ([]record, stats, error) {
	st := stats{Capture: name}
	httpLog, err := openLog(dir, "http")
	if err != nil {
		return nil, st, err
	}
	connLog, err := openLog(dir, "conn")
	if err != nil {
		return nil, st, err
	}
	if httpLog == nil && connLog == nil {
		return nil, st, errNoLogs
	}
	first := connLog
	if first == nil {
		first = httpLog
	}
	if len(first.rows) > 0 {
		c, err := first.columns("ts")
		if err != nil {
			return nil, st, err
		}
		if st.Start, err = parseZeekTime(first.rows[0][c[0]]); err != nil {
			return nil, st, fmt.Errorf("%s log line %d: %w", first.path, first.lines[0], err)
		}
	}
	sslLog, err := openLog(dir, "ssl")
	if err != nil {
		return nil, st, err
	}
	var out []record
	covered := map[string]bool{}
	if httpLog != nil {
		recs, err := convertHTTP(httpLog, name, &st)
		if err != nil {
			return nil, st, err
		}
		for _, r := range recs {
			covered[r.ZeekUID] = true
		}
		out = append(out, recs...)
	}
	sni := map[string]string{}
	if sslLog != nil {
		c, err := sslLog.columns("uid", "server_name")
		if err != nil {
			return nil, st, err
		}
		for _, row := range sslLog.rows {
			if row[c[1]] != "" {
				sni[row[c[0]]] = row[c[1]]
			}
		}
	}
	if connLog != nil {
		recs, err := convertConn(connLog, name, covered, sni, &st)
		if err != nil {
			return nil, st, err
		}
		out = append(out, recs...)
	}
	return out, st, nil
}

var connIDCols = []string{"ts", "uid", "id.orig_h", "id.resp_h", "id.resp_p", "label", "detailedlabel"}

// base fills what http.log and conn.log rows share; ok is false for a row to skip.
func base(l *zeekLog, row []string, c []int, capture string) (record, bool, error) {
	var r record
	t, err := parseZeekTime(row[c[0]])
	if err != nil {
		return r, false, err
	}
	orig, err1 := netip.ParseAddr(row[c[2]])
	resp, err2 := netip.ParseAddr(row[c[3]])
	port, err3 := strconv.ParseUint(row[c[4]], 10, 16)
	if err1 != nil || err2 != nil || err3 != nil {
		return r, false, nil
	}
	r.Time.Time = t
	r.Service = flowmodel.NormalizeIP(orig).String()
	r.Destination.IP = flowmodel.NormalizeIP(resp).String()
	r.Destination.Port = int(port)
	r.Label = strings.ToLower(row[c[5]])
	r.DetailedLabel = row[c[6]]
	r.Capture = capture
	r.ZeekLog = l.path
	r.ZeekUID = row[c[1]]
	return r, true, nil
}

func convertHTTP(l *zeekLog, capture string, st *stats) ([]record, error) {
	c, err := l.columns(append(slices.Clone(connIDCols), "method", "host", "uri", "referrer", "user_agent", "request_body_len", "response_body_len", "status_code")...)
	if err != nil {
		return nil, err
	}
	out := make([]record, 0, len(l.rows))
	for i, row := range l.rows {
		r, ok, err := base(l, row, c, capture)
		if err != nil {
			return nil, fmt.Errorf("http log line %d: %w", l.lines[i], err)
		}
		if !ok {
			st.BadRow++
			continue
		}
		r.Destination.Host = hostName(row[c[8]], st)
		r.Request.Method = row[c[7]]
		r.Request.Path = row[c[9]]
		if ref := row[c[10]]; ref != "" {
			r.header("referer", ref)
		}
		if ua := row[c[11]]; ua != "" {
			r.header("user-agent", ua)
		}
		r.Request.BodyBytes = count(row[c[12]])
		r.Response.BodyBytes = count(row[c[13]])
		if s, err := strconv.Atoi(row[c[14]]); err == nil && s >= 100 && s <= 999 {
			r.Response.Status = s
		}
		out = append(out, r)
		st.HTTP++
	}
	return out, nil
}

func convertConn(l *zeekLog, capture string, covered map[string]bool, sni map[string]string, st *stats) ([]record, error) {
	c, err := l.columns(append(slices.Clone(connIDCols), "proto", "orig_bytes", "resp_bytes")...)
	if err != nil {
		return nil, err
	}
	out := make([]record, 0, len(l.rows))
	for i, row := range l.rows {
		if covered[row[c[1]]] {
			st.ConnCovered++
			continue
		}
		r, ok, err := base(l, row, c, capture)
		if err != nil {
			return nil, fmt.Errorf("conn log line %d: %w", l.lines[i], err)
		}
		if !ok {
			st.BadRow++
			continue
		}
		if name, ok := sni[r.ZeekUID]; ok {
			if r.Destination.Host = hostName(name, st); r.Destination.Host != "" {
				st.SNI++
			}
		}
		r.Proto = row[c[7]]
		r.Request.BodyBytes = count(row[c[8]])
		r.Response.BodyBytes = count(row[c[9]])
		out = append(out, r)
		st.Conn++
	}
	return out, nil
}

func (r *record) header(k, v string) {
	if r.Request.Headers == nil {
		r.Request.Headers = map[string]string{}
	}
	r.Request.Headers[k] = v
}

// hostName returns the host name in a Host header or SNI, without port; "" for an IP
// literal (the destination IP already says it) or for a value that is no host name.
func hostName(h string, st *stats) string {
	if h == "" {
		return ""
	}
	d, err := flowmodel.ParseDestination(h)
	if err != nil {
		st.BadHost++
		return ""
	}
	return d.Host
}

// count parses a Zeek byte count; nil when unset.
func count(s string) *int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return nil
	}
	return &n
}
