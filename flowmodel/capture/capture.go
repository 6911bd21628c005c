// Package capture turns a packet capture (pcap or pcapng) into flowmodel.Flow values, so that
// baselines can be seeded from recorded staging traffic.
//
// It reassembles TCP streams and reads, per connection: HTTP/1.x requests (one flow per
// request: method, path, Host, header names, body size), the TLS server name of a ClientHello
// (one flow per connection), or, for any other TCP connection, its destination (one flow per
// connection). Each new UDP conversation is one flow. DNS answers seen in the capture bind
// IPs to the names they were resolved from, so that a later flow to such an IP, with no Host
// or server name of its own, carries that name.
//
// Decoding is streaming and bounded: flows are handed to a callback as they are recognised,
// idle streams are flushed on capture time, and the number of concurrent streams, UDP
// conversations and DNS bindings is capped. Malformed or truncated input never panics: what
// cannot be used is counted by reason in Summary.Skipped.
//
// Pure Go: gopacket's pcapgo readers and layers, no cgo, no libpcap.
package capture

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// Source is the Flow.Source of every flow this package emits.
const Source = "pcap"

// ServiceFunc names the service that sent a flow, given the IP address of the flow's client
// (the side that opened the connection or sent the first datagram).
type ServiceFunc func(client netip.Addr) string

// Fixed returns a ServiceFunc that gives every flow the service name.
func Fixed(name string) ServiceFunc {
	return func(netip.Addr) string { return name }
}

// BySourceIP names a flow's service after its client's IP address, e.g. "10.0.0.7" or
// "fd00::7" (IPv4-mapped addresses unmapped).
func BySourceIP(client netip.Addr) string { return flowmodel.NormalizeIP(client).String() }

// ServiceBy returns the ServiceFunc for the CLI's "--service-by" value: "src-ip" for
// BySourceIP. It returns an error naming the valid values otherwise.
func ServiceBy(by string) (ServiceFunc, error) {
	switch by {
	case "src-ip":
		return BySourceIP, nil
	default:
		return nil, fmt.Errorf("unknown --service-by %q: the valid value is src-ip", by)
	}
}

// Config tunes decoding. The zero value of a field means its default; Service is required.
type Config struct {
	// Service names the service of each flow. Required: Fixed(name) or BySourceIP.
	Service ServiceFunc

	// MaxStreams caps the TCP connections tracked at once. Packets of further new
	// connections are skipped (reason "tcp_stream_limit"). Default 10,000.
	MaxStreams int
	// StreamIdle is how long, in capture time, a TCP connection may stay silent before it
	// is flushed and forgotten. Default 2 minutes.
	StreamIdle time.Duration
	// MaxBufferedPages caps the out-of-order TCP segments held for reassembly, in pages of
	// about 2 KiB, over all connections; past it the oldest gaps are skipped. Default 16,384
	// (32 MiB). One connection holds at most a 64th of it.
	MaxBufferedPages int
	// MaxHeaderBytes caps an HTTP request's header block; a larger one ends parsing of its
	// connection (reason "http_header_too_large"). Default 64 KiB.
	MaxHeaderBytes int
	// MaxUDPFlows caps the UDP conversations remembered; the least recently used one is
	// forgotten first (and counts as new when it comes back). Default 65,536.
	MaxUDPFlows int
	// UDPIdle is how long, in capture time, a UDP conversation may stay silent before its
	// next datagram counts as a new flow. Default 2 minutes.
	UDPIdle time.Duration
	// MaxDNSBindings caps the IP → name bindings learned from DNS answers; the least
	// recently used one is forgotten first. Default 65,536.
	MaxDNSBindings int

	// Progress, when set, is called every ProgressEvery packets and once at the end, on the
	// goroutine that decodes. It must be quick; rate-limit terminal output in it.
	Progress func(Progress)
	// ProgressEvery is the number of packets between Progress calls. Default 4,096.
	ProgressEvery int

	// Logger receives a debug line per skipped item. Default: discard.
	Logger *slog.Logger
}

// Defaults for zero Config fields.
const (
	DefaultMaxStreams       = 10_000
	DefaultStreamIdle       = 2 * time.Minute
	DefaultMaxBufferedPages = 16_384
	DefaultMaxHeaderBytes   = 64 << 10
	DefaultMaxUDPFlows      = 65_536
	DefaultUDPIdle          = 2 * time.Minute
	DefaultMaxDNSBindings   = 65_536
	DefaultProgressEvery    = 4_096
)

// Check applies defaults and reports every problem in c.
func (c Config) Check() (Config, error) {
	var errs []error
	if c.Service == nil {
		errs = append(errs, errors.New("capture: a service is required (a fixed name or by source IP)"))
	}
	positive(&errs, "max streams", &c.MaxStreams, DefaultMaxStreams)
	positive(&errs, "max buffered pages", &c.MaxBufferedPages, DefaultMaxBufferedPages)
	positive(&errs, "max header bytes", &c.MaxHeaderBytes, DefaultMaxHeaderBytes)
	positive(&errs, "max UDP flows", &c.MaxUDPFlows, DefaultMaxUDPFlows)
	positive(&errs, "max DNS bindings", &c.MaxDNSBindings, DefaultMaxDNSBindings)
	positive(&errs, "progress interval", &c.ProgressEvery, DefaultProgressEvery)
	positive(&errs, "stream idle time", &c.StreamIdle, DefaultStreamIdle)
	positive(&errs, "UDP idle time", &c.UDPIdle, DefaultUDPIdle)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, errors.Join(errs...)
}

// positive sets a zero *v to def and adds an error to errs for a negative one.
func positive[T int | time.Duration](errs *[]error, name string, v *T, def T) {
	switch {
	case *v == 0:
		*v = def
	case *v < 0:
		*errs = append(*errs, fmt.Errorf("capture: %s must be positive, got %v", name, *v))
	}
}

// Progress reports how far decoding has come.
type Progress struct {
	// Packets is the number of packets read so far.
	Packets int64
	// Bytes is the number of bytes read from the capture file so far (compare with the
	// file's size for a percentage; for a compressed file, the compressed bytes).
	Bytes int64
	// Flows is the number of flows emitted so far.
	Flows int64
	// Time is the timestamp of the latest packet.
	Time time.Time
	// Done is set on the last call.
	Done bool
}

// Reasons a packet, stream or message was skipped (keys of Summary.Skipped).
const (
	SkipTruncatedFile      = "truncated_file"        // the file ends inside a packet record
	SkipUnsupportedLink    = "unsupported_link_type" // a link type other than Ethernet, raw IP, Linux SLL, loopback
	SkipMalformedPacket    = "malformed_packet"      // a header that does not decode
	SkipTruncatedPacket    = "truncated_packet"      // captured shorter than sent: payload not used
	SkipIPFragment         = "ip_fragment"           // IP fragments are not reassembled
	SkipTCPStreamLimit     = "tcp_stream_limit"      // packets of connections beyond MaxStreams
	SkipTCPGap             = "tcp_gap"               // bytes missing from a stream where a message was being read
	SkipHTTPMalformed      = "http_malformed"        // a request that net/http does not accept
	SkipHTTPHeaderTooLarge = "http_header_too_large" // header block over MaxHeaderBytes
	SkipHTTPIncomplete     = "http_incomplete"       // the stream ends inside a request header
	SkipTLSMalformed       = "tls_malformed"         // a ClientHello that does not parse
	SkipTLSIncomplete      = "tls_incomplete"        // the stream ends, or has a gap, inside a ClientHello
	SkipTCPNoHandshake     = "tcp_no_handshake"      // a connection seen without its SYN whose client is unknown
	SkipDNSMalformed       = "dns_malformed"         // a DNS response that does not parse
	SkipReassemblyFault    = "tcp_reassembly_fault"  // the reassembler failed; its streams were dropped
	SkipNoService          = "no_service"            // the service function returned ""
)

// Summary tells what a capture held and what was made of it.
type Summary struct {
	Packets int64 // packets read
	Bytes   int64 // bytes of captured packet data
	// Other counts packets that are neither TCP nor UDP (ARP, ICMP, ...): not an error.
	Other int64

	Flows          int64 // flows emitted, the sum of the next four
	HTTPRequests   int64 // one flow per HTTP request
	TLSHellos      int64 // one flow per TLS connection (a ClientHello)
	TCPConnections int64 // one flow per other TCP connection
	UDPFlows       int64 // one flow per UDP conversation
	// DNSAnswers counts the A and AAAA records that bound an IP to a name.
	DNSAnswers int64

	// Skipped counts what could not be used, by reason (the Skip* constants).
	Skipped map[string]int64

	// Services lists each service's flows, sorted by name.
	Services []ServiceSummary
	// Approximate is set when there were too many services, destinations or shapes to
	// count them all: the counts in Services are then lower bounds.
	Approximate bool

	// First and Last are the timestamps of the earliest and latest packets.
	First, Last time.Time
}

// ServiceSummary is one service's share of a Summary.
type ServiceSummary struct {
	Name  string
	Flows int64
	// Destinations counts distinct destinations ("host:port", else "ip:port").
	Destinations int
	// Requests counts HTTP requests; Shapes their distinct method and path (query
	// stripped; the model may group paths further).
	Requests int64
	Shapes   int
}

// SkippedTotal is the sum of Skipped.
func (s Summary) SkippedTotal() int64 {
	var n int64
	for _, v := range s.Skipped {
		n += v
	}
	return n
}
