package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	bolt "go.etcd.io/bbolt"
)

// TestAdversaryOneBadRecordSavesTheRest covers issue 10 cases 5 and 6: a service whose
// record carries a 40 KB shape (bbolt: key too large) and one dated year 10000 never keep
// another service's save (an operator's quarantine) from being written, and the bad
// records are saved as far as they can be.
func TestAdversaryOneBadRecordSavesTheRest(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	y10k := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	huge := "GET /x h:[" + strings.Repeat("x-header-name,", 3000) + "]"
	recs := []flowmodel.ServiceRecord{
		{Name: "evil/poison", Mode: flowmodel.ModeLearn, LastSeen: y10k,
			Destinations: []flowmodel.DestinationRecord{{Destination: "api.example.com:443", Count: 1, FirstSeen: t0, LastSeen: y10k}},
			Shapes:       []flowmodel.ShapeRecord{{Destination: "api.example.com:443", Shape: huge, Method: "GET", Path: "/x", Count: 1, LastSeen: y10k}}},
		{Name: "shop/checkout", Mode: flowmodel.ModeQuarantine, ModeSetBy: "alice", QuarantineAllow: []string{"vault:8200"}},
		{Name: strings.Repeat("n", 40000), Mode: flowmodel.ModeLearn},
		// Its state is too large: it fails inside the transaction, which is then retried
		// one service at a time.
		{Name: "evil/state", Mode: flowmodel.ModeQuarantine, QuarantineAllow: []string{strings.Repeat("a", 2<<20)}},
	}
	err = st.SaveAudited(recs, []flowmodel.AuditRecord{{Action: "mode", Service: "shop/checkout"}})
	var se flowmodel.SaveErrors
	if !errors.As(err, &se) || len(se) != 2 || se[recs[2].Name] == nil || se["evil/state"] == nil {
		t.Fatalf("err = %.300v, want SaveErrors naming only the service with a 40 KB name and the one with 2 MB of state", err)
	}
	if audit, _ := st.Audit(AuditQuery{}); len(audit) != 1 {
		t.Fatalf("audit records %d, want 1", len(audit))
	}
	got := loadAll(t, st)
	if q := got["shop/checkout"]; q.Mode != flowmodel.ModeQuarantine {
		t.Fatalf("the quarantine was not saved: %+v", q)
	}
	p, ok := got["evil/poison"]
	if !ok || len(p.Destinations) != 1 || len(p.Shapes) != 0 {
		t.Fatalf("poison record: saved %v, %d destinations, %d shapes; want its destination without the huge shape", ok, len(p.Destinations), len(p.Shapes))
	}
	if !p.LastSeen.Equal(flowmodel.MaxEncodedTime) || !p.Destinations[0].LastSeen.Equal(flowmodel.MaxEncodedTime) {
		t.Fatalf("year 10000 not clamped: %v %v", p.LastSeen, p.Destinations[0].LastSeen)
	}
	if s := st.Stats(); s.Clamped != 3 || s.Dropped != 1 {
		t.Fatalf("stats %+v, want 3 clamped, 1 dropped", s)
	}
	if recs[0].LastSeen != y10k {
		t.Fatal("Save changed the caller's record")
	}
	st.Close()
}

func TestAuditLogOrderAndQuery(t *testing.T) {
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs := []flowmodel.AuditRecord{
		{At: t0, Who: "a", Action: "mode", Service: "s1"},
		{At: t0, Who: "b", Action: "approve", Service: "s2"},
		{At: t0, Who: "c", Action: "reject", Service: "s1"},
	}
	if err := st.SaveAudited(nil, recs); err != nil {
		t.Fatal(err)
	}
	if recs[0].Seq != 1 || recs[2].Seq != 3 {
		t.Fatalf("seqs %d %d", recs[0].Seq, recs[2].Seq)
	}
	tests := []struct {
		name string
		q    AuditQuery
		want []string
	}{
		{"all newest first", AuditQuery{}, []string{"c", "b", "a"}},
		{"one service", AuditQuery{Service: "s1"}, []string{"c", "a"}},
		{"before", AuditQuery{Before: 3}, []string{"b", "a"}},
		{"before past the end", AuditQuery{Before: 99, Limit: 1}, []string{"c"}},
		{"limit", AuditQuery{Limit: 2}, []string{"c", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := st.Audit(tt.q)
			if err != nil {
				t.Fatal(err)
			}
			var who []string
			for _, a := range got {
				who = append(who, a.Who)
			}
			if strings.Join(who, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("got %v, want %v", who, tt.want)
			}
		})
	}
}

func TestTokens(t *testing.T) {
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tok := Token{Name: "ci", Role: "viewer", SHA256: []byte{1, 2, 3}, Created: t0}
	if err := st.PutToken(tok, &flowmodel.AuditRecord{Action: "token.create", Target: "ci"}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutToken(tok, nil); !errors.Is(err, ErrTokenExists) {
		t.Fatalf("second put: %v", err)
	}
	list, err := st.Tokens()
	if err != nil || len(list) != 1 || list[0].Role != "viewer" || string(list[0].SHA256) != "\x01\x02\x03" {
		t.Fatalf("tokens %+v %v", list, err)
	}
	if found, err := st.DeleteToken("ci", &flowmodel.AuditRecord{Action: "token.revoke", Target: "ci"}); !found || err != nil {
		t.Fatalf("delete: %v %v", found, err)
	}
	if found, _ := st.DeleteToken("ci", nil); found {
		t.Fatal("deleted twice")
	}
	audit, _ := st.Audit(AuditQuery{})
	if len(audit) != 2 || audit[0].Action != "token.revoke" {
		t.Fatalf("audit %+v", audit)
	}
}

func TestBackupAndRestore(t *testing.T) {
	dir := t.TempDir()
	want := populate(t, dir)
	path := filepath.Join(dir, FileName)
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Scheduled backups while the store is open, keeping two.
	bdir := filepath.Join(dir, BackupDir)
	clock := t0
	sched := BackupSchedule{Dir: bdir, Keep: 2, Now: func() time.Time { clock = clock.Add(time.Hour); return clock }}
	for range 3 {
		if _, rep, err := st.BackupNow(sched); err != nil || rep.Services != len(want) || rep.Audit != 1 {
			t.Fatalf("backup: %+v %v", rep, err)
		}
	}
	backups, err := Backups(bdir)
	if err != nil || len(backups) != 2 || !strings.Contains(backups[1], "20260102T180000") {
		t.Fatalf("backups kept: %v %v", backups, err)
	}
	// A change after the backup, then a check refused while the store is open.
	if err := st.Save([]flowmodel.ServiceRecord{{Name: "later/svc", Mode: flowmodel.ModeLearn}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Check(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("check of an open store: %v, want ErrLocked", err)
	}
	if _, err := Restore(backups[1], path); !errors.Is(err, ErrLocked) {
		t.Fatalf("restore over an open store: %v, want ErrLocked", err)
	}
	st.Close()

	// A damaged backup is refused and the store left alone.
	bad := filepath.Join(t.TempDir(), "bad.db")
	data, _ := os.ReadFile(backups[1])
	os.WriteFile(bad, data[:len(data)/3], 0o600)
	if _, err := Restore(bad, path); err == nil || !strings.Contains(err.Error(), "the backup") {
		t.Fatalf("restore from a damaged backup: %v", err)
	}
	if rep, err := Check(path); err != nil || rep.Services != len(want)+1 {
		t.Fatalf("store after a refused restore: %+v %v", rep, err)
	}

	rep, err := Restore(backups[1], path)
	if err != nil || rep.Services != len(want) {
		t.Fatalf("restore: %+v %v", rep, err)
	}
	got, err := openAndRead(t, dir)
	if err != nil || len(got) != len(want) {
		t.Fatalf("after restore: %d services, %v", len(got), err)
	}
	if _, ok := got["later/svc"]; ok {
		t.Fatal("restore kept a service saved after the backup")
	}
	aside, _ := filepath.Glob(path + ".before-restore-*")
	if len(aside) != 1 {
		t.Fatalf("replaced file kept aside: %v", aside)
	}
}

// TestFormat1IsSealedOnOpen: a store of format 1 (values without checksums) reads as it is
// read-only, and is sealed when opened for writing; then a flipped value is refused.
func TestFormat1IsSealedOnOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	state := `{"name":"","mode":"enforce","learn_requests":0,"requests":3,"alerted":0,"blocked":0,"destinations":null}`
	dest := `{"destination":"","count":3,"first_seen":"2026-01-02T15:00:00Z","last_seen":"2026-01-02T15:00:00Z"}`
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		meta.Put(keyFormat, []byte(formatName))
		meta.Put(keyVersion, []byte("1"))
		root, _ := tx.CreateBucket(bucketServices)
		sb, _ := root.CreateBucket([]byte("shop/checkout"))
		sb.Put(keyState, []byte(state))
		db, _ := sb.CreateBucket(bucketDestinations)
		return db.Put([]byte("api.example.com:443"), []byte(dest))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	check := func(opts Options) {
		t.Helper()
		st, err := Open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		got := loadAll(t, st)
		c := got["shop/checkout"]
		if c.Mode != flowmodel.ModeEnforce || len(c.Destinations) != 1 || c.Destinations[0].Count != 3 {
			t.Fatalf("read-only=%v: %+v", opts.ReadOnly, c)
		}
	}
	check(Options{ReadOnly: true})
	check(Options{}) // seals
	check(Options{ReadOnly: true})
	data, _ := os.ReadFile(path)
	// Every copy (old ones may linger in free pages): a count that still parses.
	if !bytes.Contains(data, []byte(`"count":3`)) {
		t.Fatal("value not found in the file")
	}
	data = bytes.ReplaceAll(data, []byte(`"count":3`), []byte(`"count":4`))
	os.WriteFile(path, data, 0o600)
	_, err = openAndRead(t, dir)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("flipped value: %v", err)
	}
}
