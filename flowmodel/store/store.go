// Package store keeps meshguard's baselines in an embedded bbolt file. It implements
// flowmodel.Store.
//
// Layout: bucket "meshguard" holds the format marker and version; bucket "services" holds one
// nested bucket per service, with the service's fields as JSON under "state" and a nested
// bucket "destinations" mapping "host:port" or "ip:port" to a JSON DestinationRecord, and a
// nested bucket "shapes" mapping "DESTINATION\x00SHAPE" to a JSON ShapeRecord; "params" holds
// the service's parameter value models (a JSON param.Snapshot), written only when they
// changed. Bucket "audit" holds the audit log (8-byte big-endian sequence → JSON
// flowmodel.AuditRecord) and bucket "tokens" the admin API's tokens (name → JSON Token, the
// token's SHA-256 only). From format version 2 every value ends with a CRC-32C of its place
// and content (see checksum.go).
//
// A store no request can break: Open refuses a damaged file (ErrDamaged) with the file's
// name and the way back (Check, Backup, Restore, the scheduled backups of RunBackups),
// bbolt's panics become errors, and Save isolates a service that cannot be saved.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the name of the store file inside a data directory.
const FileName = "meshguard.db"

const (
	formatName    = "meshguard-baselines"
	formatVersion = 2
	// defaultLockTimeout bounds the wait for the file lock held by another process.
	defaultLockTimeout = 2 * time.Second
)

var (
	bucketMeta         = []byte("meshguard")
	bucketServices     = []byte("services")
	bucketDestinations = []byte("destinations")
	bucketShapes       = []byte("shapes")
	keyFormat          = []byte("format")
	keyVersion         = []byte("version")
	keyState           = []byte("state")
	bucketAudit        = []byte("audit")
	bucketTokens       = []byte("tokens")
	keyParams          = []byte("params") // the service's parameter models (param.Snapshot JSON)
	keyRates           = []byte("rates")  // its rate, seasonal and volume detectors (flowmodel.RateSnapshot JSON)
)

// ErrLocked is returned (wrapped) when another process holds the store's lock, as a running
// "meshguard serve" does.
var ErrLocked = errors.New("locked by another process")

// ErrNotStore is returned (wrapped) for a file that is not a meshguard store: corrupt, of
// another program, or of a newer format.
var ErrNotStore = errors.New("not a meshguard store")

// Bolt is a flowmodel.Store in a bbolt file. Its methods are safe for concurrent use.
type Bolt struct {
	db      *bolt.DB
	log     *slog.Logger
	version int // of the file's format

	clamped, dropped atomic.Uint64
}

// SaveStats counts what saves had to change to store records.
type SaveStats struct {
	// Clamped counts values moved into what can be stored (times outside years 1970 to
	// 9999, NaN numbers).
	Clamped uint64 `json:"clamped"`
	// Dropped counts destinations and shapes too large to store.
	Dropped uint64 `json:"dropped"`
}

// Stats returns the counts since Open, e.g. for metrics.
func (b *Bolt) Stats() SaveStats {
	return SaveStats{Clamped: b.clamped.Load(), Dropped: b.dropped.Load()}
}

var _ flowmodel.Store = (*Bolt)(nil)

// Options tune Open.
type Options struct {
	// ReadOnly opens the file without writing; it still waits for a writer's lock.
	ReadOnly bool
	// LockTimeout bounds the wait for a lock held by another process. Default: 2s.
	LockTimeout time.Duration
	// SkipCheck skips the consistency check of every page at open (bbolt's tx.Check). The
	// check reads the whole file once; skip it only where a damaged file is checked
	// otherwise.
	SkipCheck bool
	// Logger is told of entries dropped because they cannot be stored. Default:
	// slog.Default().
	Logger *slog.Logger
}

// Open opens or creates the store in dir (creating dir). It refuses, with an error that
// names the file and the way back, and never with a panic or a silent reset:
//   - a file that is not a meshguard store (ErrNotStore);
//   - a damaged store (ErrDamaged): empty (0 bytes), truncated, failing bbolt's consistency
//     check, or missing where the marker written at creation says a store was.
func Open(dir string, opts Options) (*Bolt, error) {
	if !opts.ReadOnly {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	}
	return OpenFile(filepath.Join(dir, FileName), opts)
}

// OpenFile is Open for a store file at any path (a backup, say).
func OpenFile(path string, opts Options) (*Bolt, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = defaultLockTimeout
	}
	existed, err := precheck(path)
	if err != nil {
		return nil, err
	}
	if !existed && opts.ReadOnly {
		return nil, fmt.Errorf("open %s: %w", path, os.ErrNotExist)
	}
	var db *bolt.DB
	err = guard(path, func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly})
		return err
	})
	switch {
	case errors.Is(err, ErrDamaged):
		return nil, err
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("open %s: %w (is another meshguard using this data dir?)", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return nil, fmt.Errorf("open %s: %w (corrupt or foreign file: %v); %s", path, ErrNotStore, err, wayBack(path))
	case err != nil && existed && !errors.Is(err, fs.ErrPermission):
		// Whatever else bbolt trips over in a file that exists is damage.
		return nil, damaged(path, err.Error())
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	b := &Bolt{db: db, log: opts.Logger}
	if b.log == nil {
		b.log = slog.Default()
	}
	if err := b.checkFormat(path, opts.ReadOnly); err != nil {
		db.Close()
		if !errors.Is(err, ErrNotStore) && !errors.Is(err, ErrDamaged) && existed {
			err = damaged(path, err.Error())
		}
		return nil, err
	}
	if !opts.SkipCheck {
		if err := b.check(); err != nil {
			db.Close()
			return nil, damaged(path, err.Error())
		}
	}
	if !opts.ReadOnly {
		if err := writeMarker(path); err != nil {
			db.Close()
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}
	return b, nil
}

// maxCheckErrors bounds the problems a consistency check reports.
const maxCheckErrors = 5

// check runs bbolt's consistency check over every page, then reads every record. The pages'
// offsets are checked first by plain reads of the file (validatePages): Tx.Check follows them
// in a goroutine of its own, where a fault cannot be recovered.
func (b *Bolt) check() error {
	if err := validatePages(b.db.Path()); err != nil {
		return fmt.Errorf("consistency check failed: %w", err)
	}
	return guard(b.db.Path(), func() error {
		return b.db.View(func(tx *bolt.Tx) error {
			var errs []error
			for err := range tx.Check() {
				if len(errs) < maxCheckErrors {
					errs = append(errs, err)
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("consistency check failed: %w", errors.Join(errs...))
			}
			return nil
		})
	})
}

func (b *Bolt) checkFormat(path string, readOnly bool) error {
	check := func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			b.version = formatVersion
			if !empty {
				return fmt.Errorf("open %s: %w: it has data but no meshguard marker; move it away to start afresh", path, ErrNotStore)
			}
			if readOnly {
				return fmt.Errorf("open %s: %w: empty file", path, ErrNotStore)
			}
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keyFormat, []byte(formatName)); err != nil {
				return err
			}
			if err := meta.Put(keyVersion, []byte(strconv.Itoa(formatVersion))); err != nil {
				return err
			}
			for _, name := range [][]byte{bucketServices, bucketAudit, bucketTokens} {
				if _, err := tx.CreateBucket(name); err != nil {
					return err
				}
			}
			return nil
		}
		if f := string(meta.Get(keyFormat)); f != formatName {
			return fmt.Errorf("open %s: %w: format %q", path, ErrNotStore, f)
		}
		v, err := strconv.Atoi(string(meta.Get(keyVersion)))
		if err != nil || v < 1 {
			return fmt.Errorf("open %s: %w: bad version %q", path, ErrNotStore, meta.Get(keyVersion))
		}
		if v > formatVersion {
			return fmt.Errorf("open %s: %w: format version %d is newer than this meshguard's %d", path, ErrNotStore, v, formatVersion)
		}
		if tx.Bucket(bucketServices) == nil {
			return fmt.Errorf("open %s: %w: services bucket missing", path, ErrNotStore)
		}
		b.version = v
		if !readOnly {
			for _, name := range [][]byte{bucketAudit, bucketTokens} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			if v < 2 {
				if err := sealAll(tx); err != nil {
					return fmt.Errorf("open %s: seal values (format 1 to 2): %w", path, err)
				}
				if err := meta.Put(keyVersion, []byte(strconv.Itoa(formatVersion))); err != nil {
					return err
				}
				b.version = formatVersion
			}
		}
		return nil
	}
	return guard(path, func() error {
		if readOnly {
			return b.db.View(check)
		}
		return b.db.Update(check)
	})
}

// Close closes the file.
func (b *Bolt) Close() error { return b.db.Close() }

// Path returns the file's path.
func (b *Bolt) Path() string { return b.db.Path() }

// serviceState is ServiceRecord without its destinations and shapes, as stored under
// "state".
type serviceState struct {
	flowmodel.ServiceRecord
	Destinations []flowmodel.DestinationRecord `json:"destinations,omitempty"`
	Shapes       []flowmodel.ShapeRecord       `json:"shapes,omitempty"`
}

// shapeKey is a shape's key in the "shapes" bucket; shapePrefix the prefix of all the shapes
// of one destination.
func shapeKey(dest, shape string) []byte { return append(shapePrefix(dest), shape...) }
func shapePrefix(dest string) []byte     { return append([]byte(dest), 0) }

// Load calls fn for every stored service. A record that does not decode is an error
// wrapping ErrDamaged; an error of fn is returned as it is.
func (b *Bolt) Load(fn func(flowmodel.ServiceRecord) error) error {
	return guard(b.db.Path(), func() error { return b.db.View(func(tx *bolt.Tx) error { return b.load(tx, fn) }) })
}

func (b *Bolt) load(tx *bolt.Tx, fn func(flowmodel.ServiceRecord) error) error {
	{
		return tx.Bucket(bucketServices).ForEachBucket(func(name []byte) error {
			sb := tx.Bucket(bucketServices).Bucket(name)
			var st serviceState
			raw, err := b.unseal(sb.Get(keyState), name, keyState)
			if err != nil {
				return b.undecodable(fmt.Errorf("service %.100q: state: %w", name, err))
			}
			if err := json.Unmarshal(raw, &st); err != nil {
				return b.undecodable(fmt.Errorf("service %.100q: state: %w", name, err))
			}
			r := st.ServiceRecord
			r.Name = string(name)
			if err := b.getJSON(sb, name, keyParams, &r.Params); err != nil {
				return err
			}
			if err := b.getJSON(sb, name, keyRates, &r.Rates); err != nil {
				return err
			}
			if db := sb.Bucket(bucketDestinations); db != nil {
				r.Destinations = make([]flowmodel.DestinationRecord, 0, db.Stats().KeyN)
				err := db.ForEach(func(k, v []byte) error {
					var d flowmodel.DestinationRecord
					v, err := b.unseal(v, name, bucketDestinations, k)
					if err != nil {
						return b.undecodable(fmt.Errorf("service %.100q: destination %.100q: %w", name, k, err))
					}
					if err := json.Unmarshal(v, &d); err != nil {
						return b.undecodable(fmt.Errorf("service %.100q: destination %.100q: %w", name, k, err))
					}
					d.Destination = string(k)
					r.Destinations = append(r.Destinations, d)
					return nil
				})
				if err != nil {
					return err
				}
			}
			if sb := sb.Bucket(bucketShapes); sb != nil {
				err := sb.ForEach(func(k, v []byte) error {
					var sh flowmodel.ShapeRecord
					v, err := b.unseal(v, name, bucketShapes, k)
					if err != nil {
						return b.undecodable(fmt.Errorf("service %.100q: shape %.100q: %w", name, k, err))
					}
					if err := json.Unmarshal(v, &sh); err != nil {
						return b.undecodable(fmt.Errorf("service %.100q: shape %.100q: %w", name, k, err))
					}
					dest, text, ok := bytes.Cut(k, []byte{0})
					if !ok {
						return b.undecodable(fmt.Errorf("service %.100q: bad shape key %.100q", name, k))
					}
					sh.Destination, sh.Shape = string(dest), string(text)
					r.Shapes = append(r.Shapes, sh)
					return nil
				})
				if err != nil {
					return err
				}
			}
			return fn(r)
		})
	}
}

// undecodable reports a record that does not decode: the file is damaged.
func (b *Bolt) undecodable(err error) error { return damaged(b.db.Path(), err.Error()) }

// Save applies records. It checks each record first and drops what cannot be stored
// (logged), then writes all in one transaction; if that fails, it writes each service in a
// transaction of its own, so that one service that cannot be saved does not keep the others
// from being saved, and returns flowmodel.SaveErrors for those not saved.
func (b *Bolt) Save(records []flowmodel.ServiceRecord) error {
	return b.SaveAudited(records, nil)
}

// SaveAudited is Save, with the audit records appended to the audit log in the same
// transaction (each gets its Seq). Every transaction is synced to disk before it returns.
func (b *Bolt) SaveAudited(records []flowmodel.ServiceRecord, audit []flowmodel.AuditRecord) error {
	bad := flowmodel.SaveErrors{}
	good := make([]flowmodel.ServiceRecord, 0, len(records))
	for _, r := range records {
		r, err := b.storable(r)
		if err != nil {
			bad[r.Name] = err
			continue
		}
		good = append(good, r)
	}
	err := guard(b.db.Path(), func() error {
		return b.db.Update(func(tx *bolt.Tx) error {
			if err := appendAudit(tx, audit); err != nil {
				return err
			}
			return saveAll(tx, good)
		})
	})
	if err != nil && len(good) > 0 {
		// One service at a time: whatever failed the batch fails only its own service.
		if len(audit) > 0 {
			if err := guard(b.db.Path(), func() error { return b.db.Update(func(tx *bolt.Tx) error { return appendAudit(tx, audit) }) }); err != nil {
				return fmt.Errorf("audit log: %w", err)
			}
		}
		for _, r := range good {
			err := guard(b.db.Path(), func() error {
				return b.db.Update(func(tx *bolt.Tx) error { return saveAll(tx, []flowmodel.ServiceRecord{r}) })
			})
			if err != nil {
				bad[r.Name] = err
			}
		}
		if len(bad) == len(records) && len(audit) == 0 {
			return err // nothing saved: the store itself fails
		}
	} else if err != nil {
		return err
	}
	if len(bad) > 0 {
		return bad
	}
	return nil
}

func saveAll(tx *bolt.Tx, records []flowmodel.ServiceRecord) error {
	root := tx.Bucket(bucketServices)
	for _, r := range records {
		if err := saveService(root, r); err != nil {
			return fmt.Errorf("service %.100q: %w", r.Name, err)
		}
	}
	return nil
}

// Bounds of what one record may store. bbolt refuses keys over 32 KiB; no real name or
// shape comes near these.
const (
	maxNameBytes     = 1024
	maxDestKeyBytes  = 1024
	maxShapeKeyBytes = 8 << 10
	maxStateBytes    = 1 << 20
)

// storable returns r ready to store: times clamped into what JSON can carry, NaN numbers
// zeroed, and the destinations and shapes that cannot be stored dropped (and logged). A
// record whose service itself cannot be stored is an error.
func (b *Bolt) storable(r flowmodel.ServiceRecord) (flowmodel.ServiceRecord, error) {
	switch {
	case r.Name == "":
		return r, errors.New("empty service name")
	case len(r.Name) > maxNameBytes:
		return r, fmt.Errorf("service name of %d bytes (at most %d)", len(r.Name), maxNameBytes)
	}
	if n := r.Encodable(); n > 0 {
		b.clamped.Add(uint64(n))
		b.log.Warn("store: values out of range clamped", slog.String("service", r.Name), slog.Int("values", n))
	}
	dropped := 0
	r.Destinations = filter(r.Destinations, &dropped, func(d flowmodel.DestinationRecord) bool {
		return d.Destination != "" && len(d.Destination) <= maxDestKeyBytes
	})
	r.Shapes = filter(r.Shapes, &dropped, func(sh flowmodel.ShapeRecord) bool {
		return sh.Destination != "" && len(sh.Destination)+1+len(sh.Shape) <= maxShapeKeyBytes
	})
	if dropped > 0 {
		b.dropped.Add(uint64(dropped))
		b.log.Warn("store: entries too large to store dropped", slog.String("service", r.Name), slog.Int("entries", dropped))
	}
	return r, nil
}

// getJSON decodes into v the sealed JSON value of key in the bucket sb of service name, when
// there is one; a value that does not unseal or decode makes the store undecodable.
func (b *Bolt) getJSON(sb *bolt.Bucket, name, key []byte, v any) error {
	raw := sb.Get(key)
	if raw == nil {
		return nil
	}
	raw, err := b.unseal(raw, name, key)
	if err == nil {
		err = json.Unmarshal(raw, v)
	}
	if err != nil {
		return b.undecodable(fmt.Errorf("service %.100q: %s: %w", name, key, err))
	}
	return nil
}

// putJSON writes v as the sealed JSON value of key in the bucket sb of service name.
func putJSON(sb *bolt.Bucket, name string, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return sb.Put(key, seal(raw, []byte(name), key))
}

// saveService writes one record into its service's bucket in root.
func saveService(root *bolt.Bucket, r flowmodel.ServiceRecord) error {
	sb, err := root.CreateBucketIfNotExists([]byte(r.Name))
	if err != nil {
		return err
	}
	st := r
	st.Destinations, st.Shapes, st.Removed, st.Params, st.Rates = nil, nil, nil, nil, nil
	if r.Params != nil { // nil: unchanged, the stored models stay
		if err := putJSON(sb, r.Name, keyParams, r.Params); err != nil {
			return err
		}
	}
	if r.Rates != nil { // nil: not due, the stored states stay
		if err := putJSON(sb, r.Name, keyRates, r.Rates); err != nil {
			return err
		}
	}
	state, err := json.Marshal(serviceState{ServiceRecord: st})
	if err != nil {
		return err
	}
	if len(state) > maxStateBytes {
		return fmt.Errorf("state of %d bytes (at most %d)", len(state), maxStateBytes)
	}
	if err := sb.Put(keyState, seal(state, []byte(r.Name), keyState)); err != nil {
		return err
	}
	db, err := sb.CreateBucketIfNotExists(bucketDestinations)
	if err != nil {
		return err
	}
	shb, err := sb.CreateBucketIfNotExists(bucketShapes)
	if err != nil {
		return err
	}
	for _, k := range r.Removed {
		if err := db.Delete([]byte(k)); err != nil {
			return fmt.Errorf("delete %q: %w", k, err)
		}
		if err := deletePrefix(shb, shapePrefix(k)); err != nil {
			return err
		}
	}
	for _, d := range r.Destinations {
		key := d.Destination
		d.Destination = ""
		v, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if err := db.Put([]byte(key), seal(v, []byte(r.Name), bucketDestinations, []byte(key))); err != nil {
			return fmt.Errorf("put %q: %w", key, err)
		}
		// A saved destination carries all its shapes: replace what was stored.
		if err := deletePrefix(shb, shapePrefix(key)); err != nil {
			return err
		}
	}
	for _, sh := range r.Shapes {
		k := shapeKey(sh.Destination, sh.Shape)
		sh.Destination, sh.Shape = "", ""
		v, err := json.Marshal(sh)
		if err != nil {
			return err
		}
		if err := shb.Put(k, seal(v, []byte(r.Name), bucketShapes, k)); err != nil {
			return fmt.Errorf("put shape: %w", err)
		}
	}
	return nil
}

// filter returns the elements of s that ok accepts, adding the others to *dropped. s is
// copied when an element is dropped, never modified.
func filter[T any](s []T, dropped *int, ok func(T) bool) []T {
	for i, v := range s {
		if ok(v) {
			continue
		}
		out := append(make([]T, 0, len(s)-1), s[:i]...)
		for _, w := range s[i+1:] {
			if ok(w) {
				out = append(out, w)
			} else {
				*dropped++
			}
		}
		*dropped++
		return out
	}
	return s
}

// deletePrefix deletes every key of b that starts with prefix.
func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}
