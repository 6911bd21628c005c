package install

import (
	"strings"
	"testing"

	istionetv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
)

// TestDecodeRejects shows that the decoding the other tests rely on is strict: each
// broken manifest fails, and the valid controls pass.
func TestDecodeRejects(t *testing.T) {
	const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: x
spec:
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
      - name: x
        image: x
        ports:
        - containerPort: 1
`
	const envoyFilter = `apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: x
spec:
  workloadSelector:
    labels: {app: x}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ext_proc
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
          grpc_service:
            envoy_grpc:
              cluster_name: meshguard_ext_proc
          message_timeout: 0.2s
`
	tests := []struct {
		name    string
		doc     string
		wantErr string // "" for a valid control
	}{
		{name: "valid deployment", doc: deployment},
		{name: "valid envoy filter", doc: envoyFilter},
		{name: "unknown field", doc: strings.Replace(deployment, "  selector:", "  replica: 2\n  selector:", 1), wantErr: "unknown field"},
		{name: "field in the wrong case", doc: strings.Replace(deployment, "containerPort", "containerport", 1), wantErr: "unknown field"},
		{name: "duplicate key", doc: strings.Replace(deployment, "  name: x\n", "  name: x\n  name: y\n", 1), wantErr: "already set"},
		{name: "unknown kind", doc: strings.Replace(deployment, "kind: Deployment", "kind: Deploymnet", 1), wantErr: "no Go type"},
		{name: "unknown field in an Istio spec", doc: strings.Replace(envoyFilter, "workloadSelector", "workloadSelectors", 1), wantErr: "workloadSelectors"},
		{name: "bad Istio enum", doc: strings.Replace(envoyFilter, "SIDECAR_OUTBOUND", "SIDECAR_OUTGOING", 1), wantErr: "SIDECAR_OUTGOING"},
		{name: "unknown field in an Envoy patch", doc: strings.Replace(envoyFilter, "message_timeout", "mesage_timeout", 1), wantErr: "mesage_timeout"},
		{name: "unregistered Envoy type", doc: strings.Replace(envoyFilter, "ext_proc.v3.ExternalProcessor", "ext_proc.v3.ExternalProcesor", 1), wantErr: "ExternalProcesor"},
		// PGV rules of the message inside typed_config: ValidateAll of the HttpFilter
		// alone would not look inside the Any.
		{name: "Envoy rule inside an Any", doc: strings.Replace(envoyFilter, "message_timeout: 0.2s", "message_timeout: 7200s", 1), wantErr: "MessageTimeout"},
		{name: "Envoy rule at the top", doc: strings.Replace(envoyFilter, "name: envoy.filters.http.ext_proc", `name: ""`, 1), wantErr: "Name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := decodeAndReadEnvoy(tt.doc)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("valid control failed: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatal("accepted")
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}

// decodeAndReadEnvoy decodes one document and, for an EnvoyFilter, its Envoy patches.
func decodeAndReadEnvoy(doc string) error {
	objs, err := decodeStream("test", []byte(doc))
	if err != nil {
		return err
	}
	for _, ef := range only[*istionetv1alpha3.EnvoyFilter](objs) {
		if _, err := readEnvoyFilter(ef); err != nil {
			return err
		}
	}
	return nil
}

func TestSplitDocuments(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int
	}{
		{name: "one", in: "a: 1\n", want: 1},
		{name: "separators and comments", in: "# head\n---\na: 1\n---\n# only a comment\n---\nb: 2\n---\n", want: 2},
		{name: "separator inside a block scalar is text", in: "a: |\n  x\n  ---\n  y\n", want: 1},
		{name: "empty", in: "", want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := splitDocuments([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if len(docs) != tt.want {
				t.Fatalf("%d documents, want %d: %q", len(docs), tt.want, docs)
			}
		})
	}
}
