package flowmodel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ErrUnknownService is returned (wrapped) for a service the model does not track.
var ErrUnknownService = errors.New("unknown service")

// HasService reports whether the model tracks the named service.
func (m *Model) HasService(name string) bool { return m.lookup(name, false) != nil }

// Approval is what ApproveKnown added to a baseline.
type Approval struct {
	Destination string `json:"destination"`
	Shape       string `json:"shape,omitempty"`
	// Addresses are the IPs approved with a host destination ("ip:port"): those given and
	// those the resolver has a fresh answer for. Empty for an IP destination.
	Addresses []string `json:"addresses,omitempty"`
	// Resolved tells whether the resolver answered for the host.
	Resolved bool `json:"resolved"`
}

// ApproveKnown is Approve for a service the model tracks already (else an error wrapping
// ErrUnknownService: an approval never creates a service). For a host destination it also
// approves the host's current addresses, so that the host is allowed where it is reached
// now: addrs (the operator's, or what a block named) and the resolver's fresh answer for
// the host. Each address enters the baseline as an "ip:port" destination reached under the
// host, exactly, without widening to a prefix.
func (m *Model) ApproveKnown(service string, fb Feedback, addrs []netip.Addr) (Approval, error) {
	s := m.lookup(service, false)
	if s == nil {
		return Approval{}, fmt.Errorf("%w %q", ErrUnknownService, service)
	}
	d, err := ParseDestination(fb.Destination)
	if err != nil {
		return Approval{}, err
	}
	out := Approval{Destination: d.String(), Shape: fb.Shape}
	var ips []netip.Addr
	if d.Host != "" {
		for _, a := range addrs {
			if a.IsValid() {
				ips = append(ips, NormalizeIP(a))
			}
		}
		if m.cfg.Resolver != nil {
			if got, ok := m.cfg.Resolver.Lookup(d.Host); ok {
				out.Resolved = true
				for _, a := range got {
					ips = append(ips, NormalizeIP(a))
				}
			}
		}
		slices.SortFunc(ips, netip.Addr.Compare)
		ips = slices.Compact(ips)
	} else if len(addrs) > 0 {
		return Approval{}, errors.New("addresses go with a host destination, not an IP")
	}
	if err := m.Approve(service, fb); err != nil {
		return Approval{}, err
	}
	if len(ips) == 0 {
		return out, nil
	}
	hostKey := destKey{host: d.Host, port: d.Port}
	s.mu.Lock()
	defer s.mu.Unlock()
	at := fb.At
	if at.IsZero() {
		at = s.last
	}
	for _, ip := range ips {
		k := destKey{ip: ip, port: d.Port}
		delete(s.rejected, probeKey{dest: k})
		s.endProbation(probeKey{dest: k})
		e := m.record(s, k, at, "approval")
		e.via = hostKey
		out.Addresses = append(out.Addresses, k.String())
	}
	m.markDirty(s)
	return out, nil
}

// hostIP returns the IP a host name spells when it is an IP literal. A DNS name is never
// all digits and dots, nor has a colon, so other names are turned away without parsing.
func hostIP(h string) (netip.Addr, bool) {
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && c != '.' && c != ':' && !(c >= 'a' && c <= 'f') {
			return netip.Addr{}, false
		}
	}
	ip, err := netip.ParseAddr(strings.Trim(h, "[]"))
	if err != nil {
		return netip.Addr{}, false
	}
	return NormalizeIP(ip), true
}
