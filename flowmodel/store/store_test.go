package store

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	recs := []flowmodel.ServiceRecord{{
		Name: "shop/checkout", Mode: flowmodel.ModeEnforce, ModeSetBy: "alice", ModeChanged: t0,
		Requests: 7, FirstSeen: t0, LastSeen: t0.Add(time.Hour),
		Destinations: []flowmodel.DestinationRecord{
			{Destination: "203.0.113.7:443", Count: 5, FirstSeen: t0, LastSeen: t0.Add(time.Minute), Source: "ext_proc"},
			{Destination: "[2001:db8::1]:443", Count: 1, FirstSeen: t0, LastSeen: t0, Source: "pcap"},
			{Destination: "api.example.com:443", Count: 2, FirstSeen: t0, LastSeen: t0},
		},
	}, {Name: "shop/cart", Mode: flowmodel.ModeQuarantine, QuarantineAllow: []string{"vault:8200"}}}
	if err := st.Save(recs); err != nil {
		t.Fatal(err)
	}
	// A later save deletes one destination and updates another.
	if err := st.Save([]flowmodel.ServiceRecord{{
		Name: "shop/checkout", Mode: flowmodel.ModeEnforce, Requests: 9,
		Removed:      []string{"api.example.com:443"},
		Destinations: []flowmodel.DestinationRecord{{Destination: "203.0.113.7:443", Count: 6, FirstSeen: t0, LastSeen: t0.Add(2 * time.Minute)}},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st, err = Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got := map[string]flowmodel.ServiceRecord{}
	if err := st.Load(func(r flowmodel.ServiceRecord) error { got[r.Name] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	c := got["shop/checkout"]
	var keys []string
	for _, d := range c.Destinations {
		keys = append(keys, d.Destination)
		if d.Destination == "203.0.113.7:443" && (d.Count != 6 || !d.LastSeen.Equal(t0.Add(2*time.Minute))) {
			t.Errorf("updated destination: %+v", d)
		}
	}
	slices.Sort(keys)
	if want := []string{"203.0.113.7:443", "[2001:db8::1]:443"}; !slices.Equal(keys, want) {
		t.Errorf("destinations %v, want %v", keys, want)
	}
	if c.Mode != flowmodel.ModeEnforce || c.Requests != 9 {
		t.Errorf("service fields: %+v", c)
	}
	if q := got["shop/cart"]; q.Mode != flowmodel.ModeQuarantine || !slices.Equal(q.QuarantineAllow, []string{"vault:8200"}) {
		t.Errorf("quarantine record: %+v", q)
	}
}

func TestRefusesWhatIsNotAStore(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
		want  string
	}{
		{"garbage", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(strings.Repeat("not a database ", 2000)), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "corrupt or foreign"},
		{"foreign bbolt file", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket([]byte("someone-elses"))
				if err != nil {
					return err
				}
				return b.Put([]byte("k"), []byte("v"))
			}); err != nil {
				t.Fatal(err)
			}
			db.Close()
		}, "no meshguard marker"},
		{"newer format", func(t *testing.T, path string) {
			st, err := Open(filepath.Dir(path), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := st.db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keyVersion, []byte("99"))
			}); err != nil {
				t.Fatal(err)
			}
			st.Close()
		}, "newer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			tt.setup(t, path)
			before, _ := os.ReadFile(path)
			_, err := Open(dir, Options{})
			if !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrNotStore mentioning %q", err, tt.want)
			}
			after, _ := os.ReadFile(path)
			if string(before) != string(after) {
				t.Fatal("the refused file was modified")
			}
		})
	}
}

func TestLockedByAnother(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = Open(dir, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("err = %v", err)
	}
}

func TestModelThroughStore(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := flowmodel.New(flowmodel.Config{})
	// With an IP: a host alone, without the Resolver's fresh answers, is no destination.
	f := flowmodel.Flow{Time: t0, Service: "s", Destination: flowmodel.Destination{IP: netip.MustParseAddr("203.0.113.7"), Host: "api.example.com", Port: 443}}
	m.Decide(&f)
	m2 := restart(t, dir, st, m, flowmodel.Config{}, 1)
	m2.SetMode("s", flowmodel.ModeChange{Mode: flowmodel.ModeEnforce})
	if v := m2.Decide(&f); v.Action != flowmodel.Allow {
		t.Fatalf("learned host after reload: %s", v.Action)
	}
}

// restart flushes m's changes into st, closes it, and loads the store in dir into a new
// model with cfg, as meshguard does when it starts again; it fails unless services services
// come back. The reopened store is closed when the test ends.
func restart(t *testing.T, dir string, st *Bolt, m *flowmodel.Model, cfg flowmodel.Config, services int) *flowmodel.Model {
	t.Helper()
	if err := (&flowmodel.Persister{Model: m, Store: st}).Flush(); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m2, err := flowmodel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := m2.Load(st); err != nil || n != services {
		t.Fatalf("load: %d services, %v; want %d", n, err, services)
	}
	return m2
}
