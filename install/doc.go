// Package install holds meshguard's deployment material: the Istio sidecar and
// egress-gateway configuration (istio/), plain Kubernetes manifests (kubernetes/), the
// Helm chart (helm/meshguard) and the bootstrap of a standalone Envoy fed by meshguard's
// xDS server (envoy/).
//
// The package has no code. Its tests decode every manifest strictly with the official
// Kubernetes and Istio Go types, render the Helm chart with Helm's own engine, and
// validate every embedded Envoy configuration with go-control-plane, so that a typo in a
// field name fails the build instead of a cluster.
package install
