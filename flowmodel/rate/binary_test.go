package rate

import (
	"math"
	"reflect"
	"testing"
	"time"
)

// TestStateBinaryRoundTrip: a rate and a seasonal state in use come back field for field,
// and a damaged form is an error that leaves the state as it was. The field counts guard
// against a field added to a state but not to its binary form.
func TestStateBinaryRoundTrip(t *testing.T) {
	if n := reflect.TypeOf(State{}).NumField(); n != 11 {
		t.Fatalf("State has %d fields, the binary form 11: encode the new one", n)
	}
	if n := reflect.TypeOf(SeasonalState{}).NumField(); n != 19 {
		t.Fatalf("SeasonalState has %d fields, the binary form 19: encode the new one", n)
	}
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	sd, err := NewSeasonal(SeasonalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var s State
	var ss SeasonalState
	t0 := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	for i := range 5000 {
		at := t0.Add(time.Duration(i) * 97 * time.Second)
		d.Observe(&s, at)
		sd.Observe(&ss, at)
	}
	d.Reject(&s)
	for _, tc := range []struct {
		name string
		in   interface {
			AppendBinary([]byte) ([]byte, error)
		}
		out interface{ UnmarshalBinary([]byte) error }
	}{
		{"rate", &s, new(State)},
		{"seasonal", &ss, new(SeasonalState)},
	} {
		b, err := tc.in.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tc.out.UnmarshalBinary(b); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !reflect.DeepEqual(tc.in, tc.out) {
			t.Errorf("%s: round trip changed the state:\n%+v\n%+v", tc.name, tc.in, tc.out)
		}
		nan := append([]byte(nil), b...)
		bits := math.Float64bits(math.NaN())
		for i := range 8 {
			nan[9+i] = byte(bits >> (8 * i)) // the first float field
		}
		for name, bad := range map[string][]byte{
			"empty": nil, "version": append([]byte{9}, b[1:]...), "truncated": b[:len(b)-1],
			"trailing": append(append([]byte(nil), b...), 0), "NaN": nan,
		} {
			before := reflect.ValueOf(tc.out).Elem().Interface()
			if err := tc.out.UnmarshalBinary(bad); err == nil {
				t.Errorf("%s, %s: decoded", tc.name, name)
			}
			if !reflect.DeepEqual(before, reflect.ValueOf(tc.out).Elem().Interface()) {
				t.Errorf("%s, %s: a failed decode changed the state", tc.name, name)
			}
		}
	}
}
