package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The Istio layout:
//
//   - ServiceEntry per (namespace, external host): the host with the ports its callers in
//     that namespace used, location MESH_EXTERNAL, resolution DNS (NONE for a wildcard
//     host, which DNS cannot resolve), exportTo "." so that entries of different namespaces
//     never collide. A bare IP gets a ServiceEntry of its own, with the address as a /32 or
//     /128, resolution NONE, and a made-up host name (Istio requires one).
//   - Sidecar per workload: outboundTrafficPolicy REGISTRY_ONLY and, as its egress hosts,
//     exactly the ServiceEntries and in-cluster Services the workload used (plus the egress
//     gateway). This is what the client side can enforce: a host outside the list is not
//     routable from the workload.
//   - AuthorizationPolicy per workload, in the egress gateway's namespace, selecting the
//     gateway. An AuthorizationPolicy is enforced by the proxy that receives a request,
//     never by the client's sidecar, so for egress the only place it can act is an egress
//     gateway that the traffic is routed through (Gateway, VirtualService and
//     DestinationRule with ISTIO_MUTUAL, as in Istio's egress gateway task; meshguard does
//     not write those). It allows the workload's principal to reach its hosts; with
//     --direct-egress none is written. In-cluster destinations get none: it would have to
//     sit on the destination workload and would deny every caller meshguard has not seen.

// istioProtocol is the protocol of an external port: TLS on 443 and 8443 (the proxies
// see only SNI), HTTP where meshguard saw requests or on 80 and 8080, else TCP.
func istioProtocol(pd *portDest) string {
	switch {
	case pd.port == 443 || pd.port == 8443:
		return "TLS"
	case len(pd.requests) > 0 || pd.port == 80 || pd.port == 8080:
		return "HTTP"
	default:
		return "TCP"
	}
}

func istioDocuments(p exportPlan, opts Options) []document {
	var docs []document
	byNS := map[string][]*workload{}
	for _, w := range p.workloads {
		byNS[w.namespace] = append(byNS[w.namespace], w)
	}
	for _, ns := range sortedKeys(byNS) {
		docs = append(docs, serviceEntries(ns, byNS[ns])...)
		for _, w := range byNS[ns] {
			docs = append(docs, sidecar(w, opts))
			if ap, ok := authorizationPolicy(w, opts); ok {
				docs = append(docs, ap)
			}
		}
	}
	return docs
}

// seUse is one workload's use of one port of a ServiceEntry.
type seUse struct {
	service string
	pd      *portDest
}

// serviceEntries returns the ServiceEntries of one namespace, sorted by name.
func serviceEntries(ns string, ws []*workload) []document {
	type entry struct {
		name  string
		host  string
		addr  netip.Addr // set for a bare address
		ports map[uint16][]seUse
	}
	entries := map[string]*entry{}
	use := func(w *workload, host string, addr netip.Addr, ports []*portDest) {
		name := serviceEntryName(host)
		e := entries[name]
		if e == nil {
			e = &entry{name: name, host: host, addr: addr, ports: map[uint16][]seUse{}}
			entries[name] = e
		}
		for _, pd := range ports {
			e.ports[pd.port] = append(e.ports[pd.port], seUse{w.service, pd})
		}
	}
	for _, w := range ws {
		for _, h := range w.external {
			use(w, h.host, netip.Addr{}, h.ports)
		}
		for _, a := range w.addrs {
			use(w, addrHost(a.addr), a.addr, a.ports)
		}
	}
	var docs []document
	for _, name := range sortedKeys(entries) {
		e := entries[name]
		var comment []string
		if e.addr.IsValid() {
			comment = append(comment, fmt.Sprintf("Bare address %s, as dialled without a host name. The host below is a made-up name", e.addr),
				"that Istio requires; it resolves nowhere. Traffic matches on the address and port.")
			if e.addr.IsPrivate() {
				comment = append(comment, "A private address: if it is a ClusterIP or a pod IP, list the Service in the Sidecar instead.")
			}
		} else {
			comment = append(comment, "External host "+e.host+".")
		}
		spec := mapping()
		spec.set("hosts", strs(e.host))
		if e.addr.IsValid() {
			spec.set("addresses", strs(hostPrefix(e.addr).String()))
		}
		ports := list()
		var tcp bool
		for _, port := range sortedKeys(e.ports) {
			uses := e.ports[port]
			slices.SortFunc(uses, func(a, b seUse) int { return cmp.Compare(a.service, b.service) })
			if port == 0 {
				continue // a ServiceEntry needs a port; the callers' Sidecars say so
			}
			proto := "TCP"
			if !e.addr.IsValid() {
				// The most capable protocol any caller needs: HTTP if anyone's requests are known.
				proto = istioProtocol(uses[0].pd)
				for _, u := range uses[1:] {
					if istioProtocol(u.pd) == "HTTP" {
						proto = "HTTP"
					}
				}
			}
			tcp = tcp || proto == "TCP"
			item := mapping().
				set("number", num(int(port))).
				set("protocol", str(proto)).
				set("name", str(fmt.Sprintf("%s-%d", strings.ToLower(proto), port)))
			for _, u := range uses {
				item.note(fmt.Sprintf("%s: %s", u.service, u.pd.ev))
			}
			ports.add(item)
		}
		if len(ports.items) == 0 {
			continue // only an unknown port: the callers' Sidecars say so
		}
		if tcp && !e.addr.IsValid() {
			comment = append(comment, "Opaque TCP ports of a host without addresses match any destination address on that port (Istio routes them by port alone).")
		}
		spec.set("ports", ports)
		spec.set("location", str("MESH_EXTERNAL"))
		switch {
		case e.addr.IsValid():
			spec.set("resolution", str("NONE"))
		case isWildcard(e.host):
			comment = append(comment, "Wildcard host: resolution NONE (DNS cannot resolve a wildcard); traffic goes to the address the app dialled.")
			spec.set("resolution", str("NONE"))
		default:
			spec.set("resolution", str("DNS"))
		}
		spec.set("exportTo", strs("."))
		docs = append(docs, document{comment: comment, body: object("networking.istio.io/v1", "ServiceEntry", name, ns, spec)})
	}
	return docs
}

func serviceEntryName(host string) string {
	return objectName("meshguard", host)
}

// addrHost is the made-up host name of a bare address's ServiceEntry, e.g.
// 203-0-113-7.addr.meshguard.internal (".internal" is reserved for private use).
func addrHost(a netip.Addr) string {
	s := a.String()
	if a.Is6() {
		s = a.StringExpanded() // "::1" and "1::" must not both become "1"
	}
	return strings.NewReplacer(".", "-", ":", "-").Replace(s) + ".addr.meshguard.internal"
}

// hostPrefix returns the single-address prefix of a: /32 or /128.
func hostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}

func egressName(w *workload) string { return objectName("meshguard-egress", w.name) }

func sidecar(w *workload, opts Options) document {
	var unknownPort []string
	hosts := list()
	// host is the ServiceEntry's host, dest the destination as the workload dialled it.
	serviceEntry := func(host, dest string, ports []*portDest) {
		if hasKnownPort(ports) {
			hosts.add(str(w.namespace + "/" + host).note(portEvidence(dest, ports)...))
		}
		if ports[0].port == 0 {
			unknownPort = append(unknownPort, fmt.Sprintf("Not exported: %s on an unknown port (%s): a ServiceEntry needs a port.", dest, ports[0].ev))
		}
	}
	for _, h := range w.external {
		serviceEntry(h.host, h.host, h.ports)
	}
	for _, a := range w.addrs {
		serviceEntry(addrHost(a.addr), a.addr.String(), a.ports)
	}
	for _, c := range w.internal {
		hosts.add(str(c.namespace + "/" + c.fqdn).note(portEvidence(c.host, c.ports)...))
	}
	if len(w.external) > 0 && !opts.DirectEgress {
		gw := opts.EgressGateway.Namespace + "/" + opts.EgressGatewayService + "." + opts.EgressGateway.Namespace + ".svc." + opts.ClusterDomain
		hosts.add(str(gw).note("The egress gateway, through which external hosts are routed."))
	}
	comment := append(workloadComment(w, "Sidecar"),
		"REGISTRY_ONLY: the workload can reach only the hosts listed below; anything else goes to",
		"Istio's BlackHoleCluster (HTTP 502, TCP reset). Ports are limited by each host's ServiceEntry.")
	comment = append(comment, unknownPort...)
	if len(hosts.items) == 0 {
		comment = append(comment, "No destination to allow: the Sidecar lists no host, so all egress is refused.")
		// Istio requires a host; a namespace with no services leaves the egress empty.
		hosts.add(str("~/*"))
	}
	spec := mapping().
		set("workloadSelector", mapping().set("labels", labelMap(map[string]string{opts.WorkloadLabel: w.name}))).
		set("egress", list(mapping().set("hosts", hosts))).
		set("outboundTrafficPolicy", mapping().set("mode", str("REGISTRY_ONLY")))
	return document{comment: comment, body: object("networking.istio.io/v1", "Sidecar", egressName(w), w.namespace, spec)}
}

func hasKnownPort(ports []*portDest) bool {
	return slices.ContainsFunc(ports, func(p *portDest) bool { return p.port != 0 })
}

// portEvidence returns one comment line per port of a destination.
func portEvidence(host string, ports []*portDest) []string {
	lines := make([]string, 0, len(ports))
	for _, pd := range ports {
		if pd.port == 0 {
			lines = append(lines, fmt.Sprintf("%s (any port): %s", host, pd.ev))
			continue
		}
		lines = append(lines, fmt.Sprintf("%s: %s", joinHostPort(host, pd.port), pd.ev))
	}
	return lines
}

func joinHostPort(host string, port uint16) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

// workloadComment is the opening comment of a workload's documents.
func workloadComment(w *workload, what string) []string {
	c := []string{fmt.Sprintf("%s for %s (mode %s).", what, w.service, w.mode)}
	c = append(c, w.notes...)
	for _, d := range w.dropped {
		c = append(c, "Not exported: "+d)
	}
	return c
}

func authorizationPolicy(w *workload, opts Options) (document, bool) {
	if len(w.external) == 0 || opts.DirectEgress {
		return document{}, false
	}
	principal := fmt.Sprintf("%s/ns/%s/sa/%s", opts.TrustDomain, w.namespace, w.name)
	from := list(mapping().set("source", mapping().set("principals", strs(principal))))
	comment := append(workloadComment(w, "AuthorizationPolicy on the egress gateway"),
		"Istio enforces an AuthorizationPolicy where a request is received, never in the client's",
		"sidecar: this one acts only on traffic routed through the egress gateway over Istio mTLS.",
		"Without that routing it has no effect, and the Sidecar's REGISTRY_ONLY is the enforcement.",
		fmt.Sprintf("The principal assumes %s runs as service account %q; edit it if not.", w.service, w.name),
		"No ports are matched: at the gateway, destination.port is the gateway's own port.",
		"Methods and paths are stricter than meshguard's enforce mode, which blocks new destinations",
		"and alerts on new requests. Paths need Istio 1.22 or later: each path segment holding a",
		"placeholder ({id}, {uuid}, ...) becomes {*}, which matches any one segment.")
	rules := list()
	for _, h := range w.external {
		for _, pd := range h.ports {
			if pd.port == 0 {
				continue
			}
			dest := joinHostPort(h.host, pd.port)
			rule := mapping().set("from", from)
			rule.note(dest + ": " + pd.ev.String())
			switch proto := istioProtocol(pd); proto {
			case "TLS":
				if len(pd.requests) > 0 {
					rule.note("Request shapes are known, but on a TLS port the gateway sees only the SNI.")
				}
				rule.set("when", list(mapping().
					set("key", str("connection.sni")).
					set("values", strs(h.host))))
			case "HTTP":
				rule.set("to", httpOperations(h.host, pd, rule))
			default:
				comment = append(comment, fmt.Sprintf("Not covered: %s (%s): opaque TCP carries no host name the gateway could match.", dest, pd.ev))
				continue
			}
			rules.add(rule)
		}
	}
	if len(rules.items) == 0 {
		return document{}, false
	}
	spec := mapping().
		set("selector", mapping().set("matchLabels", labelMap(opts.EgressGateway.Labels))).
		set("action", str("ALLOW")).
		set("rules", rules)
	return document{comment: comment, body: object("security.istio.io/v1", "AuthorizationPolicy", objectName("meshguard-egress", w.namespace, w.name), opts.EgressGateway.Namespace, spec)}, true
}

// httpOperations returns the "to" list of an HTTP destination: one operation for the host,
// or, when requests are known, one per method with that method's paths.
func httpOperations(host string, pd *portDest, rule *node) *node {
	hosts := strs(host, joinHostPort(host, pd.port))
	type method struct {
		paths *node
		seen  map[string]bool
	}
	methods := map[string]*method{}
	for _, r := range pd.requests {
		path, widened, ok := istioPath(r.path)
		if !ok {
			rule.note(fmt.Sprintf("Not expressible as a path: %s %s (%s).", r.method, r.path, r.ev))
			continue
		}
		m := methods[r.method]
		if m == nil {
			m = &method{paths: list(), seen: map[string]bool{}}
			methods[r.method] = m
		}
		line := fmt.Sprintf("%s %s: %s", r.method, r.path, r.ev)
		if widened {
			line += " (widened to whole segments)"
		}
		if m.seen[path] {
			// Another template maps to the same path: its evidence joins the entry's.
			for _, it := range m.paths.items {
				if it.str == path {
					it.note(line)
				}
			}
			continue
		}
		m.seen[path] = true
		m.paths.add(str(path).note(line))
	}
	to := list()
	if len(methods) == 0 {
		if len(pd.requests) > 0 {
			rule.note("No request shape could be expressed: the host is allowed without method or path limits.")
		}
		return to.add(mapping().set("operation", mapping().set("hosts", hosts)))
	}
	for _, name := range sortedKeys(methods) {
		to.add(mapping().set("operation", mapping().
			set("hosts", hosts).
			set("methods", strs(name)).
			set("paths", methods[name].paths)))
	}
	return to
}
