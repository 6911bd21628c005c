// Package install holds meshguard's deployment material: the Istio sidecar and
// egress-gateway configuration (istio/), plain Kubernetes manifests (kubernetes/), the
// Helm chart (helm/meshguard) and the bootstrap of a standalone Envoy fed by meshguard's
// xDS server (envoy/).
//
// Every layout gives meshguard one config file (/etc/meshguard/config.yaml, a flat map of
// serve's option names) from a ConfigMap, instead of command-line flags.
//
// The package has no code. Its tests decode every manifest strictly with the official
// Kubernetes and Istio Go types, parse every meshguard config file against the known
// option names, render the Helm chart with Helm's own engine, validate every embedded
// Envoy configuration with go-control-plane, export a span with each layout's OTLP
// environment to real receivers, and check from the application's side that the sidecar
// layout keeps meshguard's control plane out of its reach, so that a typo in a field name
// or a reachable socket fails the build instead of a cluster.
package install
