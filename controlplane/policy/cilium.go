package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// The Cilium layout: one CiliumNetworkPolicy per workload, in its namespace, selecting its
// pods, with one egress rule per destination:
//
//   - DNS to the cluster DNS pods on port 53, through Cilium's DNS proxy (rules.dns with
//     matchPattern "*"), without which toFQDNs never learns an address. Any name may be
//     looked up; only the names below may be connected to.
//   - toFQDNs (matchName, or matchPattern for a wildcard host) for external hosts.
//   - toCIDR with a /32 or /128 for bare addresses.
//   - toEndpoints with the Service's namespace and workload label for in-cluster Services.
//
// A port on which meshguard saw HTTP requests, and that does not carry TLS (443, 8443),
// gets L7 rules: one per method and path template, the path as a regular expression (see
// ciliumPath). L7 rules need plaintext HTTP between the pod and the destination; in a
// mesh that encrypts pod traffic (Istio mTLS, or a sidecar originating TLS) they would
// break the connection, so delete the rules: sections there.

func ciliumDocuments(p exportPlan, opts Options) []document {
	docs := make([]document, 0, len(p.workloads))
	for _, w := range p.workloads {
		docs = append(docs, ciliumPolicy(w, opts))
	}
	return docs
}

func ciliumPolicy(w *workload, opts Options) document {
	egress := list()

	egress.add(mapping().
		note("DNS through Cilium's DNS proxy, so that toFQDNs learns the addresses of the names below.").
		set("toEndpoints", ciliumPods(opts.DNS.Namespace, opts.DNS.Labels)).
		set("toPorts", list(mapping().
			set("ports", list(ciliumPort(53, "UDP"), ciliumPort(53, "TCP"))).
			set("rules", mapping().set("dns", list(mapping().set("matchPattern", str("*"))))))))

	for _, p := range opts.MeshPeers {
		ports := list()
		for _, port := range p.Ports {
			ports.add(ciliumPort(port, "TCP"))
		}
		egress.add(mapping().
			note(fmt.Sprintf("Mesh peer %s, which every workload must reach (its control plane).", p)).
			set("toEndpoints", ciliumPods(p.Namespace, p.Labels)).
			set("toPorts", list(mapping().set("ports", ports))))
	}

	for _, h := range w.external {
		fqdn := mapping()
		if isWildcard(h.host) {
			fqdn.set("matchPattern", str(h.host))
		} else {
			fqdn.set("matchName", str(h.host))
		}
		ciliumRules(egress, h.host, h.ports, "toFQDNs", list(fqdn), nil)
	}
	for _, a := range w.addrs {
		var note []string
		if a.addr.IsPrivate() {
			note = []string{"A private address: if it is a ClusterIP or a pod IP, it will not match (policy sees",
				"the pod behind a ClusterIP); select the pods with toEndpoints instead."}
		}
		ciliumRules(egress, a.addr.String(), a.ports, "toCIDR", strs(hostPrefix(a.addr).String()), note)
	}
	for _, c := range w.internal {
		note := []string{fmt.Sprintf("In-cluster Service %s: assumes its pods carry %s: %s, and that its", c.fqdn, opts.WorkloadLabel, c.name),
			"port is the pod's port (policy applies after the Service's port mapping)."}
		ciliumRules(egress, c.host, c.ports, "toEndpoints", ciliumPods(c.namespace, map[string]string{opts.WorkloadLabel: c.name}), note)
	}

	spec := mapping().
		set("endpointSelector", mapping().set("matchLabels", labelMap(map[string]string{opts.WorkloadLabel: w.name}))).
		set("egress", egress)
	comment := append(workloadComment(w, "CiliumNetworkPolicy"),
		"Egress of the selected pods is denied but for the rules below. L7 rules (rules: http) need",
		"plaintext HTTP on the wire: remove them where a mesh encrypts pod traffic. Paths are regular",
		"expressions over the whole path; an optional query string is allowed. Written for pods that",
		"reach destinations directly: through an egress gateway, Cilium sees the gateway as the peer.")
	return document{comment: comment, body: object("cilium.io/v2", "CiliumNetworkPolicy", egressName(w), w.namespace, spec)}
}

// ciliumPods is a toEndpoints list selecting the pods with labels in namespace ns.
func ciliumPods(ns string, labels map[string]string) *node {
	sel := mapping().set("k8s:io.kubernetes.pod.namespace", str(ns))
	for _, k := range sortedKeys(labels) {
		sel.set("k8s:"+k, str(labels[k]))
	}
	return list(mapping().set("matchLabels", sel))
}

func isWildcard(host string) bool { return strings.Contains(host, "*") }

func ciliumPort(port uint16, proto string) *node {
	return mapping().set("port", str(strconv.Itoa(int(port)))).set("protocol", str(proto))
}

// ciliumRules adds the egress rules of one destination: a rule for an unknown port (any
// port), and one rule for the known ports, whose toPorts put the ports without L7 rules
// together and give each port with HTTP requests its own entry.
func ciliumRules(egress *node, host string, ports []*portDest, peerKey string, peer *node, note []string) {
	var plain []*portDest
	var l7 []*portDest
	for _, pd := range ports {
		switch {
		case pd.port == 0:
			egress.add(mapping().note(note...).
				note(fmt.Sprintf("%s (any port): %s", host, pd.ev)).
				set(peerKey, peer))
		case len(pd.requests) > 0 && istioProtocol(pd) == "HTTP":
			l7 = append(l7, pd)
		default:
			plain = append(plain, pd)
		}
	}
	if len(plain)+len(l7) == 0 {
		return
	}
	rule := mapping().note(note...)
	toPorts := list()
	if len(plain) > 0 {
		pl := list()
		for _, pd := range plain {
			pl.add(ciliumPort(pd.port, "TCP"))
			line := fmt.Sprintf("%s: %s", joinHostPort(host, pd.port), pd.ev)
			if len(pd.requests) > 0 {
				line += "; requests are known but the port carries TLS: L4 only"
			}
			rule.note(line)
		}
		toPorts.add(mapping().set("ports", pl))
	}
	for _, pd := range l7 {
		entry := mapping().note(fmt.Sprintf("%s: %s", joinHostPort(host, pd.port), pd.ev))
		http := list()
		seen := map[[2]string]*node{}
		for _, r := range pd.requests {
			expr, ok := ciliumPath(r.path)
			if !ok {
				entry.note(fmt.Sprintf("Not expressible as a path: %s %s (%s).", r.method, r.path, r.ev))
				continue
			}
			line := fmt.Sprintf("%s %s: %s", r.method, r.path, r.ev)
			k := [2]string{r.method, expr}
			if it := seen[k]; it != nil {
				it.note(line)
				continue
			}
			it := mapping().note(line).
				set("method", str(ciliumMethod(r.method))).
				set("path", str(expr))
			seen[k] = it
			http.add(it)
		}
		entry.set("ports", list(ciliumPort(pd.port, "TCP")))
		if len(http.items) > 0 {
			entry.set("rules", mapping().set("http", http))
		} else {
			entry.note("No request shape could be expressed: the port is allowed without L7 limits.")
		}
		toPorts.add(entry)
	}
	rule.set(peerKey, peer).set("toPorts", toPorts)
	egress.add(rule)
}
