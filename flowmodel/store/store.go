// Package store keeps meshguard's baselines in an embedded bbolt file. It implements
// flowmodel.Store.
//
// Layout: bucket "meshguard" holds the format marker and version; bucket "services" holds one
// nested bucket per service, with the service's fields as JSON under "state" and a nested
// bucket "destinations" mapping "host:port" or "ip:port" to a JSON DestinationRecord, and a
// nested bucket "shapes" mapping "DESTINATION\x00SHAPE" to a JSON ShapeRecord; "params" holds
// the service's parameter value models (a JSON param.Snapshot), written only when they changed.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the name of the store file inside a data directory.
const FileName = "meshguard.db"

const (
	formatName    = "meshguard-baselines"
	formatVersion = 1
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
	keyParams          = []byte("params") // the service's parameter models (param.Snapshot JSON)
)

// ErrLocked is returned (wrapped) when another process holds the store's lock, as a running
// "meshguard serve" does.
var ErrLocked = errors.New("locked by another process")

// ErrNotStore is returned (wrapped) for a file that is not a meshguard store: corrupt, of
// another program, or of a newer format.
var ErrNotStore = errors.New("not a meshguard store")

// Bolt is a flowmodel.Store in a bbolt file. Its methods are safe for concurrent use.
type Bolt struct {
	db *bolt.DB
}

var _ flowmodel.Store = (*Bolt)(nil)

// Options tune Open.
type Options struct {
	// ReadOnly opens the file without writing; it still waits for a writer's lock.
	ReadOnly bool
	// LockTimeout bounds the wait for a lock held by another process. Default: 2s.
	LockTimeout time.Duration
}

// Open opens or creates the store in dir (creating dir). A file that is not a meshguard
// store is an error wrapping ErrNotStore, never a silent reset.
func Open(dir string, opts Options) (*Bolt, error) {
	if !opts.ReadOnly {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = defaultLockTimeout
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("open %s: %w (is another meshguard using this data dir?)", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return nil, fmt.Errorf("open %s: %w (corrupt or foreign file: %v); move it away to start afresh", path, ErrNotStore, err)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	b := &Bolt{db: db}
	if err := b.checkFormat(path, opts.ReadOnly); err != nil {
		db.Close()
		return nil, err
	}
	return b, nil
}

func (b *Bolt) checkFormat(path string, readOnly bool) error {
	check := func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
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
			_, err = tx.CreateBucket(bucketServices)
			return err
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
		return nil
	}
	if readOnly {
		return b.db.View(check)
	}
	return b.db.Update(check)
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

// Load calls fn for every stored service.
func (b *Bolt) Load(fn func(flowmodel.ServiceRecord) error) error {
	return b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketServices).ForEachBucket(func(name []byte) error {
			sb := tx.Bucket(bucketServices).Bucket(name)
			var st serviceState
			if err := json.Unmarshal(sb.Get(keyState), &st); err != nil {
				return fmt.Errorf("service %q: state: %w", name, err)
			}
			r := st.ServiceRecord
			r.Name = string(name)
			if v := sb.Get(keyParams); v != nil {
				if err := json.Unmarshal(v, &r.Params); err != nil {
					return fmt.Errorf("service %q: params: %w", name, err)
				}
			}
			if db := sb.Bucket(bucketDestinations); db != nil {
				r.Destinations = make([]flowmodel.DestinationRecord, 0, db.Stats().KeyN)
				err := db.ForEach(func(k, v []byte) error {
					var d flowmodel.DestinationRecord
					if err := json.Unmarshal(v, &d); err != nil {
						return fmt.Errorf("service %q: destination %q: %w", name, k, err)
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
					if err := json.Unmarshal(v, &sh); err != nil {
						return fmt.Errorf("service %q: shape %q: %w", name, k, err)
					}
					dest, text, ok := bytes.Cut(k, []byte{0})
					if !ok {
						return fmt.Errorf("service %q: bad shape key %q", name, k)
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
	})
}

// Save applies records in one transaction.
func (b *Bolt) Save(records []flowmodel.ServiceRecord) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketServices)
		for _, r := range records {
			if r.Name == "" {
				return errors.New("save: empty service name")
			}
			if err := saveService(root, r); err != nil {
				return fmt.Errorf("service %q: %w", r.Name, err)
			}
		}
		return nil
	})
}

// saveService writes one record into its service's bucket in root.
func saveService(root *bolt.Bucket, r flowmodel.ServiceRecord) error {
	sb, err := root.CreateBucketIfNotExists([]byte(r.Name))
	if err != nil {
		return err
	}
	st := r
	st.Destinations, st.Shapes, st.Removed, st.Params = nil, nil, nil, nil
	if r.Params != nil { // nil: unchanged, the stored models stay
		v, err := json.Marshal(r.Params)
		if err != nil {
			return err
		}
		if err := sb.Put(keyParams, v); err != nil {
			return err
		}
	}
	state, err := json.Marshal(serviceState{ServiceRecord: st})
	if err != nil {
		return err
	}
	if err := sb.Put(keyState, state); err != nil {
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
		if err := db.Put([]byte(key), v); err != nil {
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
		if err := shb.Put(k, v); err != nil {
			return fmt.Errorf("put shape: %w", err)
		}
	}
	return nil
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
