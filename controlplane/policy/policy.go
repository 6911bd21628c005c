// Package policy turns learned baselines into reviewable Kubernetes policies: Istio
// (ServiceEntry, Sidecar, AuthorizationPolicy), Cilium (CiliumNetworkPolicy) and plain
// Kubernetes NetworkPolicy. It owns the mapping from a baseline to each format and the
// YAML it writes; it reads baselines, never the model or the store.
//
// Output is a multi-document YAML stream, deterministic for a given set of records
// whatever their order, with comments that carry the evidence behind every allowed
// destination and request (count, first and last seen, source). It is meant to be read by
// a person before it is applied: every assumption the export has to make (the label that
// selects a workload, its service account, the Service port versus the pod port) is said
// in a comment next to where it matters.
//
// Which services get a policy:
//   - monitor and enforce: their baseline, since learning ended.
//   - quarantine: only the quarantine allow list, which is all meshguard lets such a
//     service reach; exporting its old baseline would reopen what quarantine closed.
//   - learn: skipped, since a baseline still being learned would block what the service
//     has not yet been seen doing; Options.IncludeLearning or naming the service in
//     Options.Service exports it anyway, marked as incomplete.
//   - names that are not "namespace/workload" (e.g. a bare source address) are skipped:
//     there is nothing in Kubernetes to select.
//
// Every skipped service and every destination that a format cannot express is listed in
// a comment, so nothing disappears silently.
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
)

// Format names an output format.
type Format string

// The formats.
const (
	FormatIstio         Format = "istio"
	FormatCilium        Format = "cilium"
	FormatNetworkPolicy Format = "networkpolicy"
)

// Formats lists the formats in the order they are documented.
var Formats = []Format{FormatIstio, FormatCilium, FormatNetworkPolicy}

// ParseFormat parses a format name; the error names the valid ones.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if string(f) == s {
			return f, nil
		}
	}
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return "", fmt.Errorf("unknown format %q: valid formats are %s", s, strings.Join(names, ", "))
}

// Selector names a set of pods: a namespace and labels.
type Selector struct {
	Namespace string
	Labels    map[string]string
}

// String returns "namespace/key=value,key=value" with keys sorted; ParseSelector reads it.
func (s Selector) String() string {
	parts := make([]string, 0, len(s.Labels))
	for _, k := range sortedKeys(s.Labels) {
		parts = append(parts, k+"="+s.Labels[k])
	}
	return s.Namespace + "/" + strings.Join(parts, ",")
}

// ParseSelector parses "namespace/key=value[,key=value...]".
func ParseSelector(s string) (Selector, error) {
	ns, labels, ok := strings.Cut(s, "/")
	if !ok || ns == "" || labels == "" {
		return Selector{}, fmt.Errorf("selector %q: want namespace/key=value[,key=value]", s)
	}
	sel := Selector{Namespace: ns, Labels: map[string]string{}}
	for kv := range strings.SplitSeq(labels, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return Selector{}, fmt.Errorf("selector %q: label %q: want key=value", s, kv)
		}
		sel.Labels[k] = v
	}
	return sel, sel.check()
}

func (s Selector) check() error {
	var errs []error
	if !isDNSLabel(s.Namespace) {
		errs = append(errs, fmt.Errorf("namespace %q is not a DNS label", s.Namespace))
	}
	if len(s.Labels) == 0 {
		errs = append(errs, errors.New("no labels"))
	}
	for k, v := range s.Labels {
		if !isLabelKey(k) {
			errs = append(errs, fmt.Errorf("label key %q is not a Kubernetes label key", k))
		}
		if !isLabelValue(v) {
			errs = append(errs, fmt.Errorf("label value %q is not a Kubernetes label value", v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("selector %s: %w", s, err)
	}
	return nil
}

// Peer is a set of pods that every exported workload must reach, on the given ports,
// whatever its baseline says: the mesh's control plane, or meshguard itself when it runs
// outside the pod. The NetworkPolicy and Cilium formats allow them; without them an
// egress policy would cut a sidecar off its configuration.
type Peer struct {
	Selector
	Ports []uint16
}

// String returns "namespace/key=value[,key=value]:port[,port]"; ParsePeer reads it.
func (p Peer) String() string {
	ports := make([]string, len(p.Ports))
	for i, port := range p.Ports {
		ports[i] = strconv.Itoa(int(port))
	}
	return p.Selector.String() + ":" + strings.Join(ports, ",")
}

// ParsePeer parses "namespace/key=value[,key=value]:port[,port]".
func ParsePeer(s string) (Peer, error) {
	sel, ports, ok := strings.Cut(s, ":")
	if !ok || ports == "" {
		return Peer{}, fmt.Errorf("peer %q: want namespace/key=value[,key=value]:port[,port]", s)
	}
	var p Peer
	var err error
	if p.Selector, err = ParseSelector(sel); err != nil {
		return Peer{}, fmt.Errorf("peer %q: %w", s, err)
	}
	for ps := range strings.SplitSeq(ports, ",") {
		n, err := strconv.ParseUint(ps, 10, 16)
		if err != nil || n == 0 {
			return Peer{}, fmt.Errorf("peer %q: port %q: want 1-65535", s, ps)
		}
		p.Ports = append(p.Ports, uint16(n))
	}
	return p, nil
}

// DefaultMeshPeers returns istiod's xDS and certificate port: istio-system/app=istiod:15012.
func DefaultMeshPeers() []Peer {
	return []Peer{{Selector: Selector{Namespace: "istio-system", Labels: map[string]string{"app": "istiod"}}, Ports: []uint16{15012}}}
}

// Options tune Export. The zero value of a field means its default.
type Options struct {
	Format Format
	// Service, when set, exports only that service ("namespace/workload"), whatever its
	// mode.
	Service string
	// IncludeLearning exports services still in learn mode (marked as incomplete).
	IncludeLearning bool
	// WorkloadLabel is the pod label whose value is the workload part of a service name;
	// policies select pods with WorkloadLabel: workload. Default: "app".
	WorkloadLabel string
	// ClusterDomain is the cluster's DNS suffix. Default: "cluster.local".
	ClusterDomain string
	// DNS selects the cluster DNS pods, to which NetworkPolicy and Cilium policies allow
	// port 53 (Cilium's toFQDNs needs the lookups to go through its DNS proxy).
	// Default: kube-system/k8s-app=kube-dns.
	DNS Selector
	// EgressGateway selects the Istio egress gateway pods: the Istio format puts its
	// AuthorizationPolicies there, and the NetworkPolicy format allows external host names
	// only through it. Default: istio-system/istio=egressgateway.
	EgressGateway Selector
	// EgressGatewayService is the gateway's Service name, added to each Sidecar's egress
	// hosts so the sidecar can route to it. Default: istio-egressgateway.
	EgressGatewayService string
	// DirectEgress says that workloads reach external hosts directly, not through an egress
	// gateway: no AuthorizationPolicy is written (a gateway is the only place Istio can
	// enforce one for egress) and NetworkPolicy lists host names as not covered.
	DirectEgress bool
	// TrustDomain is the Istio trust domain of the principals that AuthorizationPolicies
	// allow. Default: "cluster.local".
	TrustDomain string
	// MeshPeers are allowed to every workload by the NetworkPolicy and Cilium formats. nil
	// means DefaultMeshPeers; an empty, non-nil slice means none.
	MeshPeers []Peer
}

// Defaults for zero Options fields.
const (
	DefaultWorkloadLabel        = "app"
	DefaultClusterDomain        = "cluster.local"
	DefaultEgressGatewayService = "istio-egressgateway"
	DefaultTrustDomain          = "cluster.local"
)

// DefaultDNS and DefaultEgressGateway return the default selectors.
func DefaultDNS() Selector {
	return Selector{Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}}
}

func DefaultEgressGateway() Selector {
	return Selector{Namespace: "istio-system", Labels: map[string]string{"istio": "egressgateway"}}
}

// Check applies defaults and reports every problem in o.
func (o Options) Check() (Options, error) {
	var errs []error
	if _, err := ParseFormat(string(o.Format)); err != nil {
		errs = append(errs, err)
	}
	if o.WorkloadLabel == "" {
		o.WorkloadLabel = DefaultWorkloadLabel
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = DefaultClusterDomain
	}
	o.ClusterDomain = strings.Trim(strings.ToLower(o.ClusterDomain), ".")
	if o.DNS.Namespace == "" && len(o.DNS.Labels) == 0 {
		o.DNS = DefaultDNS()
	}
	if o.EgressGateway.Namespace == "" && len(o.EgressGateway.Labels) == 0 {
		o.EgressGateway = DefaultEgressGateway()
	}
	if o.EgressGatewayService == "" {
		o.EgressGatewayService = DefaultEgressGatewayService
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.MeshPeers == nil {
		o.MeshPeers = DefaultMeshPeers()
	}
	for _, p := range o.MeshPeers {
		if err := p.check(); err != nil {
			errs = append(errs, fmt.Errorf("mesh peer: %w", err))
		}
		if len(p.Ports) == 0 {
			errs = append(errs, fmt.Errorf("mesh peer %s: no ports", p))
		}
	}
	if !isLabelKey(o.WorkloadLabel) {
		errs = append(errs, fmt.Errorf("workload label %q is not a Kubernetes label key", o.WorkloadLabel))
	}
	if !isDNSName(o.ClusterDomain) {
		errs = append(errs, fmt.Errorf("cluster domain %q is not a DNS name", o.ClusterDomain))
	}
	if err := o.DNS.check(); err != nil {
		errs = append(errs, fmt.Errorf("DNS: %w", err))
	}
	if err := o.EgressGateway.check(); err != nil {
		errs = append(errs, fmt.Errorf("egress gateway: %w", err))
	}
	if !isDNSLabel(o.EgressGatewayService) {
		errs = append(errs, fmt.Errorf("egress gateway service %q is not a DNS label", o.EgressGatewayService))
	}
	if !isDNSName(o.TrustDomain) {
		errs = append(errs, fmt.Errorf("trust domain %q is not a DNS name", o.TrustDomain))
	}
	return o, errors.Join(errs...)
}

// ErrUnknownService is returned (wrapped) when Options.Service names no service.
var ErrUnknownService = errors.New("unknown service")

// Export writes the policies of services in opts.Format to w. services may come in any
// order; Export does not modify them.
func Export(w io.Writer, services []flowmodel.ServiceRecord, opts Options) error {
	opts, err := opts.Check()
	if err != nil {
		return err
	}
	p := plan(services, opts)
	if opts.Service != "" && len(p.workloads) == 0 && !slices.ContainsFunc(p.skipped, func(s skippedService) bool { return s.name == opts.Service }) {
		return fmt.Errorf("%w %q", ErrUnknownService, opts.Service)
	}
	var docs []document
	switch opts.Format {
	case FormatIstio:
		docs = istioDocuments(p, opts)
	case FormatCilium:
		docs = ciliumDocuments(p, opts)
	case FormatNetworkPolicy:
		docs = networkPolicyDocuments(p, opts)
	}
	return writeDocuments(w, header(p, opts), docs)
}

// header is the comment at the top of the stream.
func header(p exportPlan, opts Options) []string {
	h := []string{
		fmt.Sprintf("meshguard policy export, format %s: %d service(s).", opts.Format, len(p.workloads)),
		"Generated from learned baselines; review before applying. Evidence per entry: requests seen,",
		"first and last seen (event time, UTC) and the source that first saw it.",
		fmt.Sprintf("Workloads are selected by the pod label %q = the workload part of \"namespace/workload\".", opts.WorkloadLabel),
	}
	for _, s := range p.skipped {
		h = append(h, fmt.Sprintf("Skipped %s: %s.", s.name, s.why))
	}
	return h
}

// exportPlan is what every format is generated from: the services to export, each with its
// destinations classified and grouped, in a fixed order.
type exportPlan struct {
	workloads []*workload
	skipped   []skippedService
}

type skippedService struct{ name, why string }

// workload is one exported service.
type workload struct {
	service   string // "namespace/workload"
	namespace string
	name      string
	mode      flowmodel.Mode
	notes     []string // said at the top of every document of this workload

	external []*hostDest    // external host names, sorted by host
	internal []*clusterDest // in-cluster services, sorted by namespace, name
	addrs    []*addrDest    // bare IPs, sorted by address
	dropped  []string       // destinations that could not be parsed or placed
}

// evidence is why a destination or request is allowed.
type evidence struct {
	count       int64
	first, last time.Time
	source      string
	// allowOnly is set for a quarantine allow-list entry with no traffic in the baseline.
	allowOnly bool
}

func (e evidence) String() string {
	if e.allowOnly && e.count == 0 {
		return "quarantine allow list; no traffic in the baseline"
	}
	s := fmt.Sprintf("%d request(s), first seen %s, last seen %s", e.count, stamp(e.first), stamp(e.last))
	if e.source != "" {
		s += ", source " + e.source
	}
	if e.allowOnly {
		s += " (quarantine allow list)"
	}
	return s
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.UTC().Format(time.RFC3339)
}

// merge widens e by o: counts add, first and last seen widen, and the source of the
// earliest sighting wins (ties broken by name, so the order of merging never matters).
func (e *evidence) merge(o evidence) {
	if sightedBefore(o, *e) {
		e.source = o.source
	}
	e.count += o.count
	if !o.first.IsZero() && (e.first.IsZero() || o.first.Before(e.first)) {
		e.first = o.first
	}
	if o.last.After(e.last) {
		e.last = o.last
	}
	e.allowOnly = e.allowOnly || o.allowOnly
}

// sightedBefore orders evidence by first sighting (unknown last), then by source, a known
// one first.
func sightedBefore(a, b evidence) bool {
	switch {
	case a.first.IsZero() != b.first.IsZero():
		return !a.first.IsZero()
	case !a.first.Equal(b.first):
		return a.first.Before(b.first)
	case (a.source == "") != (b.source == ""):
		return a.source != ""
	default:
		return a.source < b.source
	}
}

// portDest is one port of a destination, with the requests seen on it.
type portDest struct {
	port uint16 // 0: unknown, any port
	ev   evidence
	// requests are the HTTP requests (method and path template) seen, sorted by path then
	// method. Empty when no request shape is known.
	requests []*request
	// keys are the canonical destinations ("host:port") merged into this one: a Service
	// dialled as "ledger:9090" and as "ledger.shop.svc.cluster.local:9090" is one port.
	keys []string
}

type request struct {
	method string
	path   string // path template, e.g. /v1/charges/{id}
	ev     evidence
}

type hostDest struct {
	host  string
	ports []*portDest // sorted by port
}

type clusterDest struct {
	host      string // as the service dialled it
	fqdn      string // name.namespace.svc.<cluster domain>
	name      string
	namespace string
	ports     []*portDest
}

type addrDest struct {
	addr  netip.Addr
	ports []*portDest
}

// plan selects and classifies what to export. services is not modified.
func plan(services []flowmodel.ServiceRecord, opts Options) exportPlan {
	var p exportPlan
	sorted := slices.Clone(services)
	slices.SortFunc(sorted, func(a, b flowmodel.ServiceRecord) int { return cmp.Compare(a.Name, b.Name) })
	for _, r := range sorted {
		if opts.Service != "" && r.Name != opts.Service {
			continue
		}
		ns, wl, ok := strings.Cut(r.Name, "/")
		if !ok || !isDNSLabel(ns) || !isLabelValue(wl) || wl == "" || !isDNSSubdomain(wl) {
			p.skipped = append(p.skipped, skippedService{r.Name, "not a namespace/workload name that Kubernetes can select"})
			continue
		}
		w := &workload{service: r.Name, namespace: ns, name: wl, mode: r.Mode}
		var allowed []flowmodel.DestinationRecord
		switch r.Mode {
		case flowmodel.ModeLearn:
			if opts.Service == "" && !opts.IncludeLearning {
				p.skipped = append(p.skipped, skippedService{r.Name, fmt.Sprintf("still learning (%d request(s) since %s)", r.LearnRequests, stamp(r.LearnStart))})
				continue
			}
			w.notes = append(w.notes, "INCOMPLETE: this service is still learning; its baseline may lack destinations it uses.")
			allowed = r.Destinations
		case flowmodel.ModeQuarantine:
			w.notes = append(w.notes, "QUARANTINED: only the quarantine allow list is exported, as meshguard enforces it.")
			allowed = quarantineAllowed(r)
		default:
			allowed = r.Destinations
		}
		classify(w, allowed, r.Shapes, opts)
		p.workloads = append(p.workloads, w)
	}
	return p
}

// quarantineAllowed returns the allow list of a quarantined service as destination records,
// with the baseline's evidence where the baseline has the destination.
func quarantineAllowed(r flowmodel.ServiceRecord) []flowmodel.DestinationRecord {
	seen := make(map[string]flowmodel.DestinationRecord, len(r.Destinations))
	for _, d := range r.Destinations {
		if k, err := destKey(d.Destination); err == nil {
			seen[k] = d
		}
	}
	out := make([]flowmodel.DestinationRecord, 0, len(r.QuarantineAllow))
	for _, a := range r.QuarantineAllow {
		d := flowmodel.DestinationRecord{Destination: a}
		if k, err := destKey(a); err == nil {
			if s, ok := seen[k]; ok {
				d = s
			}
		}
		out = append(out, d)
	}
	return out
}

// destKey returns the canonical form of a destination string.
func destKey(s string) (string, error) {
	d, err := flowmodel.ParseDestination(s)
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// classify sorts the destinations of a workload into external hosts, in-cluster services
// and bare addresses, attaching the request shapes of each host and port.
func classify(w *workload, dests []flowmodel.DestinationRecord, shapes []flowmodel.ShapeRecord, opts Options) {
	requests := map[string]map[[2]string]*request{} // canonical destination → (path, method) → request
	for _, s := range shapes {
		k, err := destKey(s.Destination)
		if err != nil || s.Path == "" {
			continue
		}
		if !isToken(s.Method) {
			w.dropped = append(w.dropped, fmt.Sprintf("request %q %q to %s: the method is not an HTTP token", s.Method, s.Path, s.Destination))
			continue
		}
		byKey := requests[k]
		if byKey == nil {
			byKey = map[[2]string]*request{}
			requests[k] = byKey
		}
		rk := [2]string{s.Path, s.Method}
		ev := evidence{count: s.Count, first: s.FirstSeen, last: s.LastSeen, source: s.Source}
		if r := byKey[rk]; r != nil {
			r.ev.merge(ev)
		} else {
			byKey[rk] = &request{method: s.Method, path: s.Path, ev: ev}
		}
	}

	hosts := map[string]*hostDest{}
	services := map[string]*clusterDest{}
	addrs := map[netip.Addr]*addrDest{}
	for _, dr := range dests {
		d, err := flowmodel.ParseDestination(dr.Destination)
		if err != nil {
			w.dropped = append(w.dropped, fmt.Sprintf("%q: %v", dr.Destination, err))
			continue
		}
		ev := evidence{count: dr.Count, first: dr.FirstSeen, last: dr.LastSeen, source: dr.Source, allowOnly: w.mode == flowmodel.ModeQuarantine}
		pd := &portDest{port: d.Port, ev: ev, keys: []string{d.String()}}
		switch {
		case d.IP.IsValid():
			a := addrs[d.IP]
			if a == nil {
				a = &addrDest{addr: d.IP}
				addrs[d.IP] = a
			}
			a.ports = addPort(a.ports, pd)
		default:
			if svc, ns, ok := clusterService(d.Host, w.namespace, opts.ClusterDomain); ok {
				fqdn := svc + "." + ns + ".svc." + opts.ClusterDomain
				c := services[fqdn]
				if c == nil {
					c = &clusterDest{host: d.Host, fqdn: fqdn, name: svc, namespace: ns}
					services[fqdn] = c
				}
				c.ports = addPort(c.ports, pd)
				continue
			}
			if strings.HasSuffix(d.Host, "."+opts.ClusterDomain) {
				w.dropped = append(w.dropped, fmt.Sprintf("%s: an in-cluster name that is not a Service (name.namespace.svc.%s)", dr.Destination, opts.ClusterDomain))
				continue
			}
			h := hosts[d.Host]
			if h == nil {
				h = &hostDest{host: d.Host}
				hosts[d.Host] = h
			}
			h.ports = addPort(h.ports, pd)
		}
	}
	for _, k := range sortedKeys(hosts) {
		w.external = append(w.external, hosts[k])
	}
	attach := func(ports []*portDest) {
		for _, pd := range ports {
			attachRequests(pd, requests)
		}
	}
	for _, h := range hosts {
		attach(h.ports)
	}
	for _, c := range services {
		attach(c.ports)
	}
	for _, a := range addrs {
		attach(a.ports)
	}
	for _, c := range services {
		w.internal = append(w.internal, c)
	}
	slices.SortFunc(w.internal, func(a, b *clusterDest) int {
		return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name))
	})
	for _, a := range addrs {
		w.addrs = append(w.addrs, a)
	}
	slices.SortFunc(w.addrs, func(a, b *addrDest) int { return a.addr.Compare(b.addr) })
	slices.Sort(w.dropped)
}

// addPort adds pd to ports, merging with an entry of the same port (two spellings of one
// destination), and keeps ports sorted.
func addPort(ports []*portDest, pd *portDest) []*portDest {
	i, found := slices.BinarySearchFunc(ports, pd.port, func(p *portDest, port uint16) int { return cmp.Compare(p.port, port) })
	if !found {
		return slices.Insert(ports, i, pd)
	}
	old := ports[i]
	old.ev.merge(pd.ev)
	for _, k := range pd.keys {
		if !slices.Contains(old.keys, k) {
			old.keys = append(old.keys, k)
		}
	}
	return ports
}

// attachRequests sets pd.requests to the requests seen on any of its destination keys,
// merged per (path, method) and sorted. The shapes' records are copied, never shared.
func attachRequests(pd *portDest, requests map[string]map[[2]string]*request) {
	merged := map[[2]string]*request{}
	keys := slices.Clone(pd.keys)
	slices.Sort(keys)
	for _, k := range keys {
		for rk, r := range requests[k] {
			if m := merged[rk]; m != nil {
				m.ev.merge(r.ev)
			} else {
				c := *r
				merged[rk] = &c
			}
		}
	}
	pd.requests = pd.requests[:0]
	for _, r := range merged {
		pd.requests = append(pd.requests, r)
	}
	slices.SortFunc(pd.requests, func(a, b *request) int {
		return cmp.Or(cmp.Compare(a.path, b.path), cmp.Compare(a.method, b.method))
	})
}

// clusterService reports whether host names a Kubernetes Service, and which: a single
// label (resolved in the caller's namespace by the pod's DNS search path),
// "name.namespace.svc" or "name.namespace.svc.<cluster domain>" (also with a leading
// hostname label, as for a pod of a headless Service). Two-label names such as
// "payments.shop" are treated as external: they are just as often real domains.
func clusterService(host, callerNS, domain string) (name, namespace string, ok bool) {
	if !strings.Contains(host, ".") {
		return host, callerNS, isDNSLabel(host)
	}
	rest, cut := strings.CutSuffix(host, ".svc."+domain)
	if !cut {
		rest, cut = strings.CutSuffix(host, ".svc")
	}
	if !cut {
		return "", "", false
	}
	labels := strings.Split(rest, ".")
	if len(labels) < 2 || len(labels) > 3 {
		return "", "", false
	}
	name, namespace = labels[len(labels)-2], labels[len(labels)-1]
	return name, namespace, isDNSLabel(name) && isDNSLabel(namespace)
}

// object is a Kubernetes object: apiVersion, kind, metadata (name, namespace and the
// managed-by label) and spec.
func object(apiVersion, kind, name, namespace string, spec *node) *node {
	return mapping().
		set("apiVersion", str(apiVersion)).
		set("kind", str(kind)).
		set("metadata", mapping().
			set("name", str(name)).
			set("namespace", str(namespace)).
			set("labels", labelMap(map[string]string{"app.kubernetes.io/managed-by": "meshguard"}))).
		set("spec", spec)
}

// objectName returns a Kubernetes object name (a DNS subdomain: labels of at most 63
// bytes, 253 in all) built from parts joined by '-', replacing what a name may not hold
// and shortening what is too long; a wildcard '*' is spelt "wildcard". A name that had to
// change ends in a hash of the original, so that two different inputs never share a name.
func objectName(parts ...string) string {
	orig := strings.Join(parts, "-")
	mapped := []byte(strings.ReplaceAll(orig, "*", "wildcard"))
	for i, c := range mapped {
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.':
		case 'A' <= c && c <= 'Z':
			mapped[i] = c + 'a' - 'A'
		default:
			mapped[i] = '-'
		}
	}
	var labels []string
	for l := range strings.SplitSeq(string(mapped), ".") {
		if l = strings.Trim(l, "-"); l != "" {
			labels = append(labels, l)
		}
	}
	if name := strings.Join(labels, "."); name == orig && isDNSSubdomain(name) {
		return name
	}
	const hashLen = 9 // "-" and 8 hex digits
	if name := strings.Join(labels, "."); len(name) > 253-hashLen {
		labels = strings.Split(strings.TrimRight(name[:253-hashLen], "-."), ".")
	}
	for i, l := range labels {
		limit := 63
		if i == len(labels)-1 {
			limit -= hashLen
		}
		if len(l) > limit {
			labels[i] = strings.TrimRight(l[:limit], "-")
		}
	}
	return fmt.Sprintf("%s-%08x", strings.Join(labels, "."), fnv32(orig))
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	labelValue = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$`)
	labelName  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
)

func isDNSLabel(s string) bool { return dnsLabel.MatchString(s) }

// isToken reports whether s is an HTTP token (RFC 9110 tchar), as a method must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func isDNSSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}

// isDNSName accepts a lower-case DNS name (labels of letters, digits and '-').
func isDNSName(s string) bool { return isDNSSubdomain(s) }

func isLabelValue(s string) bool { return len(s) <= 63 && labelValue.MatchString(s) }

// isLabelKey accepts "[prefix/]name" with a DNS subdomain prefix.
func isLabelKey(s string) bool {
	prefix, name, ok := strings.Cut(s, "/")
	if !ok {
		name, prefix = prefix, ""
	} else if !isDNSSubdomain(prefix) {
		return false
	}
	return labelName.MatchString(name)
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}
