package flowmodel

import (
	"math"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// Every new destination alerts (and, in enforce, is blocked) alike; its verdict score says
// how far it lies from what the service uses, so that an operator's queue, and any ranking of
// verdicts, puts a port scan or a raw-IP beacon on a port the service never used above one
// more address of a CDN it already calls. The score stays in (maxSoftScore, 1]: above every
// soft anomaly of a known destination.
//
// The evidence is the service's baseline, summarised as it is recorded (nearby), and the rate
// at which it has met new destinations lately (fanout):
//
//   - port: a port none of its destinations uses raises the score; a port it uses lowers it.
//   - name: a host whose registrable domain (eTLD+1, by the public suffix list) the service
//     names already lowers it, when DNS (or a replay) vouches for the name at its IP; an IP
//     in a network (/24, /48) and port the service uses, named by no host, lowers it too.
//     Destinations admitted by probation alone vouch for no neighbour, and one that leaves
//     the baseline stops vouching.
//   - fan-out: many distinct new destinations in a few minutes (a scan, a worm, a sweep of
//     a C2 list) raise it, up to 1.
//
// None of this makes a new destination known or changes its reasons: it orders them.

// nearby summarises a service's baseline for scoring new destinations: the ports, registrable
// domains and networks (with port) of its destinations, as bounded sets of hashes. A set that
// overflowed stops giving evidence (full): "port never used" needs the whole list.
type nearby struct {
	ports   []uint16
	domains []uint64
	nets    []uint64
	full    uint8 // nearPorts|nearDomains|nearNets: that set overflowed
}

const (
	nearPorts uint8 = 1 << iota
	nearDomains
	nearNets
)

// Bounds of the nearby sets, per service.
const (
	maxNearPorts   = 64
	maxNearDomains = 256
	maxNearNets    = 256
)

// fanout is a service's recent rate of distinct new destinations: a count decayed with
// fanoutHalfLife, increased by each new-destination flow to another destination than the
// one before it.
type fanout struct {
	level float64
	at    int64  // unix nanoseconds of the last update
	last  uint64 // hash of the last new destination
}

const (
	fanoutHalfLife = 5 * 60 * 1e9 // nanoseconds
	// fanoutFull is the level at which fan-out alone puts a new destination at score 1:
	// about this many distinct new destinations within a half-life.
	fanoutFull = 16
)

// note records k in the nearby sets. Call with the service's mutex held.
func (n *nearby) note(m *Model, k destKey) {
	if k.port != 0 {
		n.ports, n.full = addBounded(n.ports, k.port, maxNearPorts, n.full, nearPorts)
	}
	if k.host != "" {
		if d, ok := registrable(k.host); ok {
			n.domains, n.full = addBounded(n.domains, m.hashKey(destKey{host: d}), maxNearDomains, n.full, nearDomains)
		}
		return
	}
	if k.ip.IsValid() {
		n.nets, n.full = addBounded(n.nets, m.hashKey(netKey(k)), maxNearNets, n.full, nearNets)
	}
}

// addBounded adds v to the sorted set s unless there, marking flag in full when s is at max.
func addBounded[T uint16 | uint64](s []T, v T, max int, full, flag uint8) ([]T, uint8) {
	i, ok := slices.BinarySearch(s, v)
	if ok {
		return s, full
	}
	if len(s) >= max {
		return s, full | flag
	}
	return slices.Insert(s, i, v), full
}

func has[T uint16 | uint64](s []T, v T) bool {
	_, ok := slices.BinarySearch(s, v)
	return ok
}

// registrable returns host's registrable domain (eTLD+1, by the public suffix list), or
// false when the list gives no evidence: host is itself a public suffix, or its suffix comes
// only from the list's default rule (an unlisted TLD such as cluster.local, svc, internal or
// consul, where "registrable" would lump every service of a cluster, or every namespace, into
// one domain).
func registrable(host string) (string, bool) {
	suffix, icann := publicsuffix.PublicSuffix(host)
	if !icann && !strings.Contains(suffix, ".") {
		return "", false
	}
	i := len(host) - len(suffix) - 1
	if i <= 0 || host[i] != '.' {
		return "", false
	}
	return host[strings.LastIndexByte(host[:i], '.')+1:], true
}

// netKey is the network of k's IP (/24 for IPv4, /48 for IPv6) with k's port.
func netKey(k destKey) destKey {
	bits := 48
	if k.ip.Is4() {
		bits = 24
	}
	p, err := k.ip.Prefix(bits)
	if err != nil {
		return destKey{ip: k.ip, port: k.port}
	}
	return destKey{ip: p.Addr(), port: k.port}
}

// newDest is what judge established of a destination the service does not know.
type newDest struct {
	ipKey, hostKey destKey
	hasIP, hasHost bool
	hostKnown      bool    // the host is in the baseline (at other IPs)
	hard           Reasons // the hard reasons so far (host_ip_mismatch)
}

// newDestScore scores a flow to a destination the service does not know, and counts it in
// the service's fan-out. Call with s.mu held.
func (m *Model) newDestScore(s *service, f *Flow, d newDest) float64 {
	k := d.hostKey
	if d.hasIP {
		k = d.ipKey
	}
	h := m.hashKey(k)
	now := nanos(s.now) // the service's clock: past or future event times move it no faster
	fo := &s.fan
	if fo.at != 0 && now > fo.at {
		fo.level *= math.Exp2(-float64(now-fo.at) / fanoutHalfLife)
	}
	if now > fo.at {
		fo.at = now
	}
	if h != fo.last {
		fo.level++
		fo.last = h
	}
	if d.hard.Has(ReasonHostIPMismatch) {
		// A name the resolver places elsewhere: the workload lies about where it goes.
		return 1
	}

	if s.nearStale {
		m.rebuildNear(s)
	}
	n := &s.near
	ev := 0.5
	port := f.Destination.Port
	switch {
	case port != 0 && has(n.ports, port):
		ev -= 0.2
	case port != 0 && n.full&nearPorts == 0 && len(n.ports) > 0:
		ev += 0.2
	}
	switch {
	case d.hostKnown:
		// A name the service uses, at an address nothing vouches for: not near, whatever
		// its domain (the name is the workload's word; a spoofed Host names a known host).
	case d.hasHost && len(n.domains) > 0 && m.nameVouched(f, d.hasIP):
		if dom, ok := registrable(d.hostKey.host); ok && has(n.domains, m.hashKey(destKey{host: dom})) {
			ev -= 0.25
		}
	case d.hasIP && !d.hasHost:
		if has(n.nets, m.hashKey(netKey(d.ipKey))) {
			ev -= 0.2
		}
	}
	if fo.level > 1 {
		ev += 0.5 * min(1, (fo.level-1)/(fanoutFull-1))
	}
	ev = min(max(ev, 0.05), 1)
	return maxSoftScore + (1-maxSoftScore)*ev
}

// rebuildNear recomputes s's nearby sets from its destinations, after one left the baseline
// (rejected, or forgotten by the LRU), so that it no longer vouches for its neighbours. Entries
// admitted by probation alone never do. Call with s.mu held.
func (m *Model) rebuildNear(s *service) {
	s.near, s.nearStale = nearby{}, false
	for _, e := range s.dests.Values() {
		if e.source != sourceProbation {
			s.near.note(m, e.key)
		}
	}
}

// nameVouched reports whether f's host name may stand for its destination: there is no IP
// (an egress gateway resolves the name itself), the model replays recorded names
// (TrustHostNames), or the resolver's fresh answers for the name hold the IP. Otherwise the
// name is only what the workload wrote, and a workload could borrow a known domain to look
// near.
func (m *Model) nameVouched(f *Flow, hasIP bool) bool {
	if !hasIP || m.cfg.TrustHostNames {
		return true
	}
	_, at := m.lookupHost(f.Destination)
	return at
}
