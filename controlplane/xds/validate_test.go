package xds

import (
	"net/netip"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// validateDeep runs the generated ValidateAll on m and on every message packed in an Any
// inside it, at any depth (ValidateAll itself does not look into an Any). It returns how
// many messages it validated.
func validateDeep(t *testing.T, m proto.Message) int {
	t.Helper()
	n := 0
	var walk func(m protoreflect.Message, where string)
	check := func(msg proto.Message, where string) {
		v, ok := msg.(interface{ ValidateAll() error })
		if !ok {
			t.Errorf("%s: %T has no ValidateAll", where, msg)
			return
		}
		n++
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %T: %v", where, msg, err)
		}
	}
	walk = func(m protoreflect.Message, where string) {
		if a, ok := m.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				t.Errorf("%s: unpack %s: %v", where, a.GetTypeUrl(), err)
				return
			}
			where += "<" + strings.TrimPrefix(a.GetTypeUrl(), "type.googleapis.com/") + ">"
			check(inner, where)
			walk(inner.ProtoReflect(), where)
			return
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			name := where + "." + string(fd.Name())
			switch {
			case fd.IsMap():
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
						walk(mv.Message(), name+"["+k.String()+"]")
						return true
					})
				}
			case fd.IsList():
				if fd.Kind() == protoreflect.MessageKind {
					for i := 0; i < v.List().Len(); i++ {
						walk(v.List().Get(i).Message(), name)
					}
				}
			case fd.Kind() == protoreflect.MessageKind:
				walk(v.Message(), name)
			}
			return true
		})
	}
	check(m, string(m.ProtoReflect().Descriptor().Name()))
	walk(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().Name()))
	return n
}

// conn is what Envoy's network RBAC sees of a connection.
type conn struct {
	src  netip.Addr
	dst  netip.AddrPort
	sni  string
	peer string // URI SAN of the peer certificate
}

// allowed evaluates rules the way Envoy's network RBAC engine does, for the permission and
// principal kinds the generator uses. A nil *RBAC allows everything.
func allowed(t *testing.T, rb *rbacv3.RBAC, c conn) bool {
	t.Helper()
	if rb == nil {
		return true
	}
	matched := false
	for _, p := range rb.GetPolicies() {
		permOK := false
		for _, perm := range p.GetPermissions() {
			if permMatch(t, perm, c) {
				permOK = true
				break
			}
		}
		princOK := false
		for _, pr := range p.GetPrincipals() {
			if principalMatch(t, pr, c) {
				princOK = true
				break
			}
		}
		if permOK && princOK {
			matched = true
			break
		}
	}
	switch rb.GetAction() {
	case rbacv3.RBAC_ALLOW:
		return matched
	case rbacv3.RBAC_DENY:
		return !matched
	}
	t.Fatalf("unexpected action %v", rb.GetAction())
	return false
}

func cidrContains(t *testing.T, prefix string, bits uint32, a netip.Addr) bool {
	t.Helper()
	p, err := netip.ParseAddr(prefix)
	if err != nil {
		t.Fatalf("bad CIDR address %q", prefix)
	}
	pp, err := p.Prefix(int(bits))
	if err != nil {
		t.Fatalf("bad CIDR %s/%d", prefix, bits)
	}
	return pp.Contains(a)
}

func stringMatch(t *testing.T, m *matcherv3.StringMatcher, s string) bool {
	t.Helper()
	if m.GetIgnoreCase() {
		s = strings.ToLower(s)
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return s == p.Exact
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(s, p.Suffix)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(s, p.Prefix)
	}
	t.Fatalf("unsupported string matcher %T", m.GetMatchPattern())
	return false
}

func permMatch(t *testing.T, p *rbacv3.Permission, c conn) bool {
	t.Helper()
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return r.Any
	case *rbacv3.Permission_AndRules:
		for _, q := range r.AndRules.GetRules() {
			if !permMatch(t, q, c) {
				return false
			}
		}
		return true
	case *rbacv3.Permission_OrRules:
		for _, q := range r.OrRules.GetRules() {
			if permMatch(t, q, c) {
				return true
			}
		}
		return false
	case *rbacv3.Permission_NotRule:
		return !permMatch(t, r.NotRule, c)
	case *rbacv3.Permission_DestinationIp:
		return cidrContains(t, r.DestinationIp.GetAddressPrefix(), r.DestinationIp.GetPrefixLen().GetValue(), c.dst.Addr())
	case *rbacv3.Permission_DestinationPort:
		return r.DestinationPort == uint32(c.dst.Port())
	case *rbacv3.Permission_RequestedServerName:
		return stringMatch(t, r.RequestedServerName, c.sni)
	}
	t.Fatalf("unsupported permission %T", p.GetRule())
	return false
}

func principalMatch(t *testing.T, p *rbacv3.Principal, c conn) bool {
	t.Helper()
	switch r := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return r.Any
	case *rbacv3.Principal_OrIds:
		for _, q := range r.OrIds.GetIds() {
			if principalMatch(t, q, c) {
				return true
			}
		}
		return false
	case *rbacv3.Principal_AndIds:
		for _, q := range r.AndIds.GetIds() {
			if !principalMatch(t, q, c) {
				return false
			}
		}
		return true
	case *rbacv3.Principal_NotId:
		return !principalMatch(t, r.NotId, c)
	case *rbacv3.Principal_DirectRemoteIp:
		return cidrContains(t, r.DirectRemoteIp.GetAddressPrefix(), r.DirectRemoteIp.GetPrefixLen().GetValue(), c.src)
	case *rbacv3.Principal_Authenticated_:
		return c.peer != "" && stringMatch(t, r.Authenticated.GetPrincipalName(), c.peer)
	}
	t.Fatalf("unsupported principal %T", p.GetIdentifier())
	return false
}
