package xds

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
)

// path is a listener path that carries an RBAC filter. The HTTP path, when
// Config.RBACOnHTTP puts one there, uses the plain-TCP rules (no SNI on plain HTTP).
type path uint8

const (
	pathTCP path = iota
	pathTLS
	numPaths
)

// Policy names in the generated RBAC.
const (
	policyEnforce    = "meshguard:enforce:"
	policyQuarantine = "meshguard:quarantine:"
	policyMonitor    = "meshguard:monitor:"
	policyOthers     = "meshguard:others"
)

// nodePolicy is the compiled L4 policy of one node.
type nodePolicy struct {
	rules  [numPaths]*rbacv3.RBAC // enforcing rules; nil: none
	shadow [numPaths]*rbacv3.RBAC // shadow rules (monitor); nil: none
	// serverFirst maps each configured server-first port to the destination IPs allowed on
	// it, for the filter chains that connect at once.
	serverFirst map[uint32][]netip.Addr
	skipped     []Skip
}

func (np *nodePolicy) enforcing(p path) bool { return np.rules[p] != nil }

// allowSet is a parsed list of destinations, by port (0: any port).
type allowSet struct {
	ips   map[uint16]map[netip.Addr]struct{}
	hosts map[uint16]map[string]struct{}
}

func parseAllow(service string, dests []string, skips *[]Skip) allowSet {
	a := allowSet{ips: map[uint16]map[netip.Addr]struct{}{}, hosts: map[uint16]map[string]struct{}{}}
	for _, s := range dests {
		d, err := flowmodel.ParseDestination(s)
		if err != nil {
			*skips = append(*skips, Skip{Service: service, Reason: SkipBadDestination, Detail: s})
			continue
		}
		if d.IP.IsValid() {
			addTo(a.ips, d.Port, d.IP)
		}
		if d.Host != "" {
			addTo(a.hosts, d.Port, d.Host)
		}
	}
	return a
}

func addTo[K comparable](m map[uint16]map[K]struct{}, port uint16, k K) {
	s := m[port]
	if s == nil {
		s = map[K]struct{}{}
		m[port] = s
	}
	s[k] = struct{}{}
}

func destinationStrings(ds []flowmodel.DestinationRecord) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Destination
	}
	return out
}

func (a allowSet) hasIP() bool { return len(a.ips) > 0 }

func sortedAddrs(s map[netip.Addr]struct{}) []netip.Addr {
	return slices.SortedFunc(maps.Keys(s), func(x, y netip.Addr) int { return x.Compare(y) })
}

func (a allowSet) allHosts() []string {
	seen := map[string]struct{}{}
	for _, hs := range a.hosts {
		for h := range hs {
			seen[h] = struct{}{}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// serverFirstIPs returns the IPs allowed on each of the given ports.
func (a allowSet) serverFirstIPs(ports []uint32, into map[uint32][]netip.Addr) {
	for _, p := range ports {
		set := map[netip.Addr]struct{}{}
		for _, port := range []uint16{uint16(p), 0} {
			for ip := range a.ips[port] {
				set[ip] = struct{}{}
			}
		}
		if len(set) > 0 {
			into[p] = mergeAddrs(into[p], sortedAddrs(set))
		}
	}
}

func mergeAddrs(a, b []netip.Addr) []netip.Addr {
	out := slices.Concat(a, b)
	slices.SortFunc(out, func(x, y netip.Addr) int { return x.Compare(y) })
	return slices.Compact(out)
}

// enforcePermissions compiles a baseline: per port, the destination port and one of the
// learned IPs; on TLS, unless sniCheck is off and if any host is known, the SNI must be
// absent or a learned host. The IP always decides, as in flowmodel: a known host name at an
// unknown IP is not known.
func (a allowSet) enforcePermissions(p path, sniCheck bool) []*rbacv3.Permission {
	var sni *rbacv3.Permission
	if hosts := a.allHosts(); p == pathTLS && sniCheck && len(hosts) > 0 {
		rules := []*rbacv3.Permission{sniPermission("")}
		for _, h := range hosts {
			rules = append(rules, sniPermission(h))
		}
		sni = orPermission(rules)
	}
	var out []*rbacv3.Permission
	for _, port := range slices.Sorted(maps.Keys(a.ips)) {
		rules := []*rbacv3.Permission{ipsPermission(a.ips[port])}
		if sni != nil {
			rules = append(rules, sni)
		}
		out = append(out, onPort(port, rules...))
	}
	return out
}

// quarantinePermissions compiles an explicit allow list the way flowmodel reads it: a
// destination is allowed when its IP or its host is listed. Hosts can be seen only as SNI,
// so on plain TCP only IPs allow.
func (a allowSet) quarantinePermissions(p path) []*rbacv3.Permission {
	var out []*rbacv3.Permission
	for _, port := range slices.Sorted(maps.Keys(a.ips)) {
		out = append(out, onPort(port, ipsPermission(a.ips[port])))
	}
	if p == pathTLS {
		for _, port := range slices.Sorted(maps.Keys(a.hosts)) {
			var rules []*rbacv3.Permission
			for _, h := range slices.Sorted(maps.Keys(a.hosts[port])) {
				rules = append(rules, sniPermission(h))
			}
			out = append(out, onPort(port, orPermission(rules)))
		}
	}
	return out
}

// onPort requires the rules on a destination port (0: any port).
func onPort(port uint16, rules ...*rbacv3.Permission) *rbacv3.Permission {
	if port != 0 {
		rules = append([]*rbacv3.Permission{portPermission(port)}, rules...)
	}
	return andPermission(rules)
}

// ipsPermission matches any of the IPs, in address order.
func ipsPermission(ips map[netip.Addr]struct{}) *rbacv3.Permission {
	var rules []*rbacv3.Permission
	for _, ip := range sortedAddrs(ips) {
		rules = append(rules, ipPermission(ip))
	}
	return orPermission(rules)
}

func ipPermission(ip netip.Addr) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr(netip.PrefixFrom(ip, ip.BitLen()))}}
}

func cidr(p netip.Prefix) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

func portPermission(port uint16) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(port)}}
}

// sniPermission matches the requested server name: exactly, "" for none, or by suffix for
// a wildcard "*.example.com".
func sniPermission(host string) *rbacv3.Permission {
	m := &matcherv3.StringMatcher{IgnoreCase: true, MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}}
	if suffix, ok := strings.CutPrefix(host, "*"); ok && len(suffix) > 1 {
		m.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: suffix}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: m}}
}

func orPermission(rules []*rbacv3.Permission) *rbacv3.Permission {
	if len(rules) == 1 {
		return rules[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: rules}}}
}

func andPermission(rules []*rbacv3.Permission) *rbacv3.Permission {
	if len(rules) == 1 {
		return rules[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: rules}}}
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

// allowRBAC returns ALLOW rules; with no policies they deny everything.
func allowRBAC(policies map[string]*rbacv3.Policy) *rbacv3.RBAC {
	if policies == nil {
		policies = map[string]*rbacv3.Policy{}
	}
	return &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: policies}
}

func (g *Generator) sidecarPolicy(rec *flowmodel.ServiceRecord) nodePolicy {
	np := nodePolicy{serverFirst: map[uint32][]netip.Addr{}}
	if rec == nil {
		return np
	}
	principals := []*rbacv3.Principal{anyPrincipal()}
	switch rec.Mode {
	case flowmodel.ModeEnforce, flowmodel.ModeMonitor:
		set := parseAllow(rec.Name, destinationStrings(rec.Destinations), &np.skipped)
		enforce := rec.Mode == flowmodel.ModeEnforce
		if !set.hasIP() {
			// Nothing learned allows nothing: an enforce service denies everything at L4
			// from its first push (fail closed); a monitor service shadows that only when
			// asked to.
			switch {
			case enforce:
				for p := range numPaths {
					np.rules[p] = allowRBAC(nil)
				}
			case g.cfg.DenyAllWhenEmpty:
				for p := range numPaths {
					np.shadow[p] = allowRBAC(nil)
				}
			}
			return np
		}
		name := policyMonitor + rec.Name
		if enforce {
			name = policyEnforce + rec.Name
		}
		for p := range numPaths {
			rb := allowRBAC(map[string]*rbacv3.Policy{name: {
				Permissions: set.enforcePermissions(p, !g.cfg.SkipSNICheck),
				Principals:  principals,
			}})
			if enforce {
				np.rules[p] = rb
			} else {
				np.shadow[p] = rb
			}
		}
		if enforce {
			set.serverFirstIPs(g.cfg.ServerFirstPorts, np.serverFirst)
		}
	case flowmodel.ModeQuarantine:
		set := parseAllow(rec.Name, rec.QuarantineAllow, &np.skipped)
		for p := range numPaths {
			var policies map[string]*rbacv3.Policy
			if perms := set.quarantinePermissions(p); len(perms) > 0 {
				policies = map[string]*rbacv3.Policy{policyQuarantine + rec.Name: {Permissions: perms, Principals: principals}}
			}
			np.rules[p] = allowRBAC(policies)
		}
		set.serverFirstIPs(g.cfg.ServerFirstPorts, np.serverFirst)
	}
	return np
}

// gatewayEntry is one source service in a gateway's RBAC.
type gatewayEntry struct {
	policy     string
	principals []*rbacv3.Principal
	perms      [numPaths][]*rbacv3.Permission
}

func (g *Generator) gatewayPolicy(services []flowmodel.ServiceRecord) nodePolicy {
	np := nodePolicy{serverFirst: map[uint32][]netip.Addr{}}
	recs := slices.Clone(services)
	slices.SortFunc(recs, func(a, b flowmodel.ServiceRecord) int { return cmp.Compare(a.Name, b.Name) })
	var enforced, monitored []gatewayEntry
	for i := range recs {
		rec := &recs[i]
		if rec.Mode != flowmodel.ModeEnforce && rec.Mode != flowmodel.ModeMonitor && rec.Mode != flowmodel.ModeQuarantine {
			continue
		}
		principals := g.gatewayPrincipals(rec.Name)
		if len(principals) == 0 {
			np.skipped = append(np.skipped, Skip{Service: rec.Name, Reason: SkipNoPrincipals})
			continue
		}
		e := gatewayEntry{principals: principals}
		switch rec.Mode {
		case flowmodel.ModeQuarantine:
			set := parseAllow(rec.Name, rec.QuarantineAllow, &np.skipped)
			e.policy = policyQuarantine + rec.Name
			for p := range numPaths {
				e.perms[p] = set.quarantinePermissions(p)
			}
			set.serverFirstIPs(g.cfg.ServerFirstPorts, np.serverFirst)
			enforced = append(enforced, e)
		case flowmodel.ModeEnforce, flowmodel.ModeMonitor:
			set := parseAllow(rec.Name, destinationStrings(rec.Destinations), &np.skipped)
			enforce := rec.Mode == flowmodel.ModeEnforce
			if !set.hasIP() {
				// No policy of its own, but its sources are excluded from the others policy:
				// denied everything (enforce), or shadow-denied (monitor, when asked).
				switch {
				case enforce:
					enforced = append(enforced, e)
				case g.cfg.DenyAllWhenEmpty:
					monitored = append(monitored, e)
				}
				continue
			}
			for p := range numPaths {
				e.perms[p] = set.enforcePermissions(p, !g.cfg.SkipSNICheck)
			}
			if enforce {
				e.policy = policyEnforce + rec.Name
				set.serverFirstIPs(g.cfg.ServerFirstPorts, np.serverFirst)
				enforced = append(enforced, e)
			} else {
				e.policy = policyMonitor + rec.Name
				monitored = append(monitored, e)
			}
		}
	}
	for p := range numPaths {
		np.rules[p] = gatewayRBAC(enforced, p)
		np.shadow[p] = gatewayRBAC(monitored, p)
	}
	return np
}

// gatewayRBAC gives each entry's sources its permissions and lets every other source
// through. It returns nil for no entries.
func gatewayRBAC(entries []gatewayEntry, p path) *rbacv3.RBAC {
	if len(entries) == 0 {
		return nil
	}
	policies := map[string]*rbacv3.Policy{}
	var all []*rbacv3.Principal
	for _, e := range entries {
		all = append(all, e.principals...)
		if len(e.perms[p]) > 0 && e.policy != "" {
			policies[e.policy] = &rbacv3.Policy{Permissions: e.perms[p], Principals: e.principals}
		}
	}
	others := all[0]
	if len(all) > 1 {
		others = &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: all}}}
	}
	policies[policyOthers] = &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{anyPermission()},
		Principals:  []*rbacv3.Principal{{Identifier: &rbacv3.Principal_NotId{NotId: others}}},
	}
	return allowRBAC(policies)
}

// gatewayPrincipals returns how a gateway recognises a service's connections: the IP the
// service is named by (identity source 4), its SPIFFE ID (source 3), and configured sources.
func (g *Generator) gatewayPrincipals(service string) []*rbacv3.Principal {
	var specs []principalSpec
	if a, err := netip.ParseAddr(service); err == nil {
		a = a.Unmap()
		specs = append(specs, principalSpec{prefix: netip.PrefixFrom(a, a.BitLen())})
	}
	if id, ok := nodeid.SPIFFEID(g.cfg.TrustDomain, service); ok {
		specs = append(specs, principalSpec{spiffe: id})
	}
	specs = append(specs, g.cfg.principals[service]...)
	slices.SortFunc(specs, func(a, b principalSpec) int {
		return cmp.Or(cmp.Compare(a.spiffe, b.spiffe), a.prefix.Addr().Compare(b.prefix.Addr()), cmp.Compare(a.prefix.Bits(), b.prefix.Bits()))
	})
	specs = slices.Compact(specs)
	out := make([]*rbacv3.Principal, 0, len(specs))
	for _, s := range specs {
		if s.spiffe != "" {
			out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
				PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s.spiffe}},
			}}})
			continue
		}
		out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr(s.prefix)}})
	}
	return out
}
