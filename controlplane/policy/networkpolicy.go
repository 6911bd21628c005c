package policy

import "fmt"

// The NetworkPolicy layout: one NetworkPolicy per workload, in its namespace, selecting its
// pods, policyTypes [Egress], as the L3/L4 backstop under a mesh:
//
//   - DNS to the cluster DNS pods on port 53 (UDP and TCP).
//   - In-cluster Services: the namespace (kubernetes.io/metadata.name) and the workload
//     label of their pods, with the port.
//   - Bare addresses: ipBlock with a /32 or /128, with the port.
//   - External host names cannot be named in a NetworkPolicy. Unless DirectEgress, they are
//     reached through the egress gateway, so its pods are allowed (on any port: the
//     gateway's pod ports are its own business). With DirectEgress they are listed as not
//     covered: add ipBlocks for them, or use the Cilium or Istio export.

func networkPolicyDocuments(p exportPlan, opts Options) []document {
	docs := make([]document, 0, len(p.workloads))
	for _, w := range p.workloads {
		docs = append(docs, networkPolicy(w, opts))
	}
	return docs
}

// npPods is a "to" list selecting the pods with labels in namespace ns.
func npPods(ns string, labels map[string]string) *node {
	return list(mapping().
		set("namespaceSelector", mapping().set("matchLabels", labelMap(map[string]string{"kubernetes.io/metadata.name": ns}))).
		set("podSelector", mapping().set("matchLabels", labelMap(labels))))
}

func npPort(proto string, port uint16) *node {
	return mapping().set("protocol", str(proto)).set("port", num(int(port)))
}

func npPorts(ports []*portDest) (*node, bool) {
	l := list()
	for _, pd := range ports {
		if pd.port == 0 {
			return nil, false // any port
		}
		l.add(npPort("TCP", pd.port))
	}
	return l, true
}

func networkPolicy(w *workload, opts Options) document {
	egress := list()
	egress.add(mapping().
		note("DNS to the cluster DNS pods.").
		set("to", npPods(opts.DNS.Namespace, opts.DNS.Labels)).
		set("ports", list(npPort("UDP", 53), npPort("TCP", 53))))

	for _, p := range opts.MeshPeers {
		ports := list()
		for _, port := range p.Ports {
			ports.add(npPort("TCP", port))
		}
		egress.add(mapping().
			note(fmt.Sprintf("Mesh peer %s, which every workload must reach (its control plane).", p)).
			set("to", npPods(p.Namespace, p.Labels)).
			set("ports", ports))
	}

	for _, c := range w.internal {
		rule := mapping().
			note(fmt.Sprintf("In-cluster Service %s: assumes its pods carry %s: %s, and that its", c.fqdn, opts.WorkloadLabel, c.name),
				"port is the pod's port (NetworkPolicy applies after the Service's port mapping).").
			note(portEvidence(c.host, c.ports)...).
			set("to", npPods(c.namespace, map[string]string{opts.WorkloadLabel: c.name}))
		if ports, ok := npPorts(c.ports); ok {
			rule.set("ports", ports)
		}
		egress.add(rule)
	}
	for _, a := range w.addrs {
		rule := mapping()
		if a.addr.IsPrivate() {
			rule.note("A private address: if it is a ClusterIP or a pod IP, it will not match (NetworkPolicy",
				"sees the pod behind a ClusterIP); select the pods instead.")
		}
		rule.note(portEvidence(a.addr.String(), a.ports)...).
			set("to", list(mapping().set("ipBlock", mapping().set("cidr", str(hostPrefix(a.addr).String())))))
		if ports, ok := npPorts(a.ports); ok {
			rule.set("ports", ports)
		}
		egress.add(rule)
	}

	comment := workloadComment(w, "NetworkPolicy")
	comment = append(comment, "Egress of the selected pods is denied but for the rules below.")
	if len(w.external) > 0 {
		var lines []string
		for _, h := range w.external {
			lines = append(lines, portEvidence(h.host, h.ports)...)
		}
		if opts.DirectEgress {
			comment = append(comment, "Not covered: NetworkPolicy cannot name hosts, so these are blocked unless you add ipBlocks:")
			for _, l := range lines {
				comment = append(comment, "- "+l)
			}
		} else {
			egress.add(mapping().
				note("External hosts, which NetworkPolicy cannot name, through the egress gateway:").
				note(lines...).
				set("to", npPods(opts.EgressGateway.Namespace, opts.EgressGateway.Labels)))
		}
	}

	spec := mapping().
		set("podSelector", mapping().set("matchLabels", labelMap(map[string]string{opts.WorkloadLabel: w.name}))).
		set("policyTypes", strs("Egress")).
		set("egress", egress)
	return document{comment: comment, body: object("networking.k8s.io/v1", "NetworkPolicy", egressName(w), w.namespace, spec)}
}
