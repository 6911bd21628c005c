package install

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	istionetv1 "istio.io/client-go/pkg/apis/networking/v1"
	istionetv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	// Envoy types that typed_config Any values in the manifests name; importing them
	// registers them with protoregistry.GlobalTypes, which protojson and
	// anypb.UnmarshalNew resolve against. A type missing here makes a manifest fail.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// object is one decoded manifest document.
type object struct {
	source string // file and document index, for messages
	kind   string // apiVersion/kind
	obj    any    // a pointer to the typed object
}

func (o object) name() string {
	if m, ok := o.obj.(metav1.Object); ok {
		return m.GetName()
	}
	return ""
}

// kinds maps apiVersion/kind to a constructor of the official Go type. For Istio
// kinds, spec is the proto message inside the object: Istio's generated UnmarshalJSON
// allows unknown fields, so decode re-reads spec strictly with protojson.
var kinds = map[string]func() (obj any, spec proto.Message){
	"v1/Namespace":             func() (any, proto.Message) { return &corev1.Namespace{}, nil },
	"v1/ServiceAccount":        func() (any, proto.Message) { return &corev1.ServiceAccount{}, nil },
	"v1/ConfigMap":             func() (any, proto.Message) { return &corev1.ConfigMap{}, nil },
	"v1/Service":               func() (any, proto.Message) { return &corev1.Service{}, nil },
	"v1/PersistentVolumeClaim": func() (any, proto.Message) { return &corev1.PersistentVolumeClaim{}, nil },
	"apps/v1/Deployment":       func() (any, proto.Message) { return &appsv1.Deployment{}, nil },
	"apps/v1/DaemonSet":        func() (any, proto.Message) { return &appsv1.DaemonSet{}, nil },
	"networking.k8s.io/v1/NetworkPolicy": func() (any, proto.Message) {
		return &networkingv1.NetworkPolicy{}, nil
	},
	"networking.istio.io/v1alpha3/EnvoyFilter": func() (any, proto.Message) {
		o := &istionetv1alpha3.EnvoyFilter{}
		return o, &o.Spec
	},
	"networking.istio.io/v1/Gateway": func() (any, proto.Message) {
		o := &istionetv1.Gateway{}
		return o, &o.Spec
	},
	"networking.istio.io/v1/VirtualService": func() (any, proto.Message) {
		o := &istionetv1.VirtualService{}
		return o, &o.Spec
	},
	"networking.istio.io/v1/DestinationRule": func() (any, proto.Message) {
		o := &istionetv1.DestinationRule{}
		return o, &o.Spec
	},
	"networking.istio.io/v1/ServiceEntry": func() (any, proto.Message) {
		o := &istionetv1.ServiceEntry{}
		return o, &o.Spec
	},
	"networking.istio.io/v1/Sidecar": func() (any, proto.Message) {
		o := &istionetv1.Sidecar{}
		return o, &o.Spec
	},
}

// splitDocuments splits a multi-document YAML stream the way kubectl does (on "---"
// lines) and drops documents that hold only comments or whitespace.
func splitDocuments(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split YAML: %w", err)
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", len(docs), err)
		}
		if string(bytes.TrimSpace(j)) == "null" {
			continue
		}
		docs = append(docs, doc)
	}
}

// strictJSON unmarshals JSON into v, failing on unknown and duplicate fields and on
// field names in the wrong case (encoding/json alone would accept "containerport").
func strictJSON(data []byte, v any) error {
	strict, err := sigsjson.UnmarshalStrict(data, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// decodeDocument decodes one YAML document into its official Go type, strictly.
func decodeDocument(doc []byte) (object, error) {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return object{}, err
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return object{}, fmt.Errorf("read apiVersion and kind: %w", err)
	}
	key := tm.APIVersion + "/" + tm.Kind
	newObj, ok := kinds[key]
	if !ok {
		return object{}, fmt.Errorf("no Go type registered for %q", key)
	}
	obj, spec := newObj()
	if err := strictJSON(j, obj); err != nil {
		return object{}, fmt.Errorf("%s: %w", key, err)
	}
	if spec != nil {
		var raw struct {
			Spec json.RawMessage `json:"spec"`
		}
		if err := json.Unmarshal(j, &raw); err != nil {
			return object{}, fmt.Errorf("%s: %w", key, err)
		}
		if len(raw.Spec) == 0 {
			return object{}, fmt.Errorf("%s: no spec", key)
		}
		if err := protojson.Unmarshal(raw.Spec, spec); err != nil {
			return object{}, fmt.Errorf("%s spec: %w", key, err)
		}
	}
	return object{kind: key, obj: obj}, nil
}

// decodeStream decodes every document of a YAML stream; source names it in messages.
func decodeStream(source string, data []byte) ([]object, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	objs := make([]object, 0, len(docs))
	var errs []error
	for i, doc := range docs {
		o, err := decodeDocument(doc)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s document %d: %w", source, i, err))
			continue
		}
		o.source = fmt.Sprintf("%s#%d", source, i)
		objs = append(objs, o)
	}
	return objs, errors.Join(errs...)
}

// decodeFile decodes a manifest file of this package (path relative to it).
func decodeFile(t *testing.T, path string) []object {
	t.Helper()
	data, err := os.ReadFile(filepath.FromSlash(path))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeStream(path, data)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) == 0 {
		t.Fatalf("%s: no objects", path)
	}
	return objs
}

// only returns the objects of type T.
func only[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the single object of type T, failing the test unless there is exactly one.
func one[T any](t *testing.T, objs []object) T {
	t.Helper()
	all := only[T](objs)
	if len(all) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, got %d", zero, len(all))
	}
	return all[0]
}

// envoyFromStruct reads an Envoy message from a protobuf Struct (the form of an
// EnvoyFilter patch value) through JSON, strictly: unknown fields and unregistered Any
// types fail.
func envoyFromStruct(s *structpb.Struct, m proto.Message) error {
	b, err := protojson.Marshal(s)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(b, m)
}

// envoyFromYAML reads an Envoy message from YAML, strictly.
func envoyFromYAML(data []byte, m proto.Message) error {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(j, m)
}

type validatorAll interface{ ValidateAll() error }

// validateDeep runs the protoc-gen-validate rules of m and of every message packed in an
// Any inside it, however deep: ValidateAll itself stops at an Any.
func validateDeep(m proto.Message) error {
	var errs []error
	if v, ok := m.(validatorAll); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err))
		}
	} else {
		errs = append(errs, fmt.Errorf("%s has no ValidateAll", m.ProtoReflect().Descriptor().FullName()))
	}
	eachAny(m.ProtoReflect(), func(a *anypb.Any) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err))
			return
		}
		errs = append(errs, validateDeep(inner))
	})
	return errors.Join(errs...)
}

// eachAny calls fn for every Any set in m, not descending into the Anys themselves.
func eachAny(m protoreflect.Message, fn func(*anypb.Any)) {
	visit := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
		if fd.Message() == nil {
			return
		}
		msg := v.Message()
		if fd.Message().FullName() == "google.protobuf.Any" {
			fn(msg.Interface().(*anypb.Any))
			return
		}
		eachAny(msg, fn)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				visit(fd, l.Get(i))
			}
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(fd.MapValue(), mv)
				return true
			})
		default:
			visit(fd, v)
		}
		return true
	})
}
