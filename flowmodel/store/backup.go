package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// BackupDir is the folder of scheduled backups inside a data directory.
const BackupDir = "backups"

// Report is what Check found in a store file.
type Report struct {
	Path     string `json:"path"`
	Bytes    int64  `json:"bytes"`
	Services int    `json:"services"`
	Audit    int    `json:"audit_records"`
	Tokens   int    `json:"tokens"`
}

// Check opens the store file at path read-only and checks it through: the meshguard
// format, every page (bbolt's consistency check) and every record. It fails with ErrLocked
// while a running meshguard holds the file; back it up through that meshguard then.
func Check(path string) (Report, error) {
	b, err := OpenFile(path, Options{ReadOnly: true})
	if err != nil {
		return Report{}, err
	}
	defer b.Close()
	return b.report()
}

func (b *Bolt) report() (Report, error) {
	rep := Report{Path: b.db.Path()}
	if err := b.Load(func(flowmodel.ServiceRecord) error { rep.Services++; return nil }); err != nil {
		return rep, damaged(b.db.Path(), err.Error())
	}
	err := guard(b.db.Path(), func() error {
		return b.db.View(func(tx *bolt.Tx) error {
			rep.Bytes = tx.Size()
			if ab := tx.Bucket(bucketAudit); ab != nil {
				rep.Audit = ab.Stats().KeyN
			}
			if tb := tx.Bucket(bucketTokens); tb != nil {
				rep.Tokens = tb.Stats().KeyN
			}
			return nil
		})
	})
	if err != nil {
		return rep, err
	}
	if _, err := b.Tokens(); err != nil {
		return rep, damaged(b.db.Path(), err.Error())
	}
	if _, err := b.Audit(AuditQuery{Limit: 1}); err != nil {
		return rep, damaged(b.db.Path(), err.Error())
	}
	return rep, nil
}

// Backup writes a consistent copy of the store file at path to dst (a file), then checks
// the copy. The store must not be open in another process (Check says ErrLocked);
// a running meshguard writes its own backups (RunBackups).
func Backup(path, dst string) (Report, error) {
	b, err := OpenFile(path, Options{ReadOnly: true})
	if err != nil {
		return Report{}, err
	}
	defer b.Close()
	return b.Backup(dst)
}

// Backup writes a consistent copy of the open store to dst while it serves (bbolt's
// tx.WriteTo in a read transaction), through a temporary file synced and renamed, then
// checks the copy and returns what it holds.
func (b *Bolt) Backup(dst string) (Report, error) {
	if abs, _ := filepath.Abs(dst); abs == b.db.Path() {
		return Report{}, errors.New("backup: the destination is the store itself")
	}
	tmp := dst + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return Report{}, fmt.Errorf("backup: %w", err)
	}
	err = guard(b.db.Path(), func() error {
		return b.db.View(func(tx *bolt.Tx) error {
			_, err := tx.WriteTo(f)
			return err
		})
	})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return Report{}, fmt.Errorf("backup to %s: %w", dst, err)
	}
	_ = syncDir(filepath.Dir(dst))
	rep, err := Check(dst)
	if err != nil {
		return rep, fmt.Errorf("backup written to %s fails its check: %w", dst, err)
	}
	return rep, nil
}

// Restore replaces the store file at path with the backup at src, after checking the
// backup through (Check). The file replaced, if any, is kept beside it as
// "<path>.before-restore-<time>". It fails with ErrLocked while a meshguard holds path:
// stop it first.
func Restore(src, path string) (Report, error) {
	rep, err := Check(src)
	if err != nil {
		return rep, fmt.Errorf("restore: the backup %s: %w", src, err)
	}
	// Hold the store's lock while replacing it, so that no meshguard starts meanwhile.
	if _, err := os.Stat(path); err == nil {
		var lock *bolt.DB
		err := guard(path, func() error {
			var err error
			lock, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: defaultLockTimeout, ReadOnly: true})
			return err
		})
		if err != nil {
			if errors.Is(err, berrors.ErrTimeout) {
				return rep, fmt.Errorf("restore %s: %w (stop the meshguard using it first)", path, ErrLocked)
			}
			// A damaged file cannot be opened: it is what restore replaces.
		} else {
			defer lock.Close()
		}
		aside := fmt.Sprintf("%s.before-restore-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if err := os.Rename(path, aside); err != nil {
			return rep, fmt.Errorf("restore: keep the replaced file: %w", err)
		}
	}
	in, err := os.Open(src)
	if err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	defer in.Close()
	data, err := io.ReadAll(in)
	if err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	if err := writeFileSync(path, data, 0o600); err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	if err := writeMarker(path); err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	rep.Path = path
	return rep, nil
}

// BackupSchedule configures RunBackups.
type BackupSchedule struct {
	// Interval between backups; 0 or less: none.
	Interval time.Duration
	// Dir receives the backups, named "meshguard-<UTC time>.db" (created with mode 0700).
	Dir string
	// Keep is how many backups to keep, the newest. Default: 24.
	Keep int
	// OnBackup and OnError are told of each backup written or failed. Optional.
	OnBackup func(path string, r Report)
	OnError  func(error)
	// Now is the clock of the file names. Default: time.Now.
	Now func() time.Time
}

// RunBackups writes a backup of b every s.Interval until ctx ends.
func (b *Bolt) RunBackups(ctx context.Context, s BackupSchedule) {
	if s.Interval <= 0 {
		return
	}
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			path, rep, err := b.BackupNow(s)
			switch {
			case err != nil && s.OnError != nil:
				s.OnError(err)
			case err == nil && s.OnBackup != nil:
				s.OnBackup(path, rep)
			}
		}
	}
}

// BackupNow writes one backup as s describes and deletes the oldest beyond s.Keep.
func (b *Bolt) BackupNow(s BackupSchedule) (string, Report, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	keep := s.Keep
	if keep <= 0 {
		keep = 24
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return "", Report{}, fmt.Errorf("backup: %w", err)
	}
	path := filepath.Join(s.Dir, "meshguard-"+now().UTC().Format("20060102T150405.000Z")+".db")
	rep, err := b.Backup(path)
	if err != nil {
		return path, rep, err
	}
	return path, rep, pruneBackups(s.Dir, keep)
}

// Backups lists the backups in dir, oldest first.
func Backups(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); e.Type().IsRegular() && strings.HasPrefix(n, "meshguard-") && strings.HasSuffix(n, ".db") {
			out = append(out, filepath.Join(dir, n))
		}
	}
	slices.Sort(out) // the names sort by time
	return out, nil
}

func pruneBackups(dir string, keep int) error {
	all, err := Backups(dir)
	if err != nil {
		return fmt.Errorf("prune backups: %w", err)
	}
	var errs []error
	for len(all) > keep {
		if err := os.Remove(all[0]); err != nil {
			errs = append(errs, err)
		}
		all = all[1:]
	}
	return errors.Join(errs...)
}
