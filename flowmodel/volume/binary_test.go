package volume

import (
	"reflect"
	"testing"
	"time"
)

// TestStateBinaryRoundTrip: a volume state in use comes back field for field, and a
// damaged form is an error that leaves the state as it was.
func TestStateBinaryRoundTrip(t *testing.T) {
	if n := reflect.TypeOf(State{}).NumField(); n != 19 {
		t.Fatalf("State has %d fields, the binary form 19: encode the new one", n)
	}
	d := newDetector(t, Config{})
	var s State
	for i := range 3000 {
		d.Observe(&s, t0.Add(time.Duration(i)*61*time.Second), int64(1000+i%700))
	}
	d.Reject(&s)
	b, err := s.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	var got State
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got != s {
		t.Errorf("round trip changed the state:\n%+v\n%+v", s, got)
	}
	for name, bad := range map[string][]byte{"empty": nil, "version": append([]byte{9}, b[1:]...), "truncated": b[:len(b)-2], "flag 2": append(append([]byte(nil), b[:len(b)-1]...), 2)} {
		before := got
		if err := got.UnmarshalBinary(bad); err == nil {
			t.Errorf("%s: decoded", name)
		}
		if got != before {
			t.Errorf("%s: a failed decode changed the state", name)
		}
	}
}
