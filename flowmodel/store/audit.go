package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meshguard/meshguard/flowmodel"
	bolt "go.etcd.io/bbolt"
)

// MaxAudit bounds the audit log: past it, the oldest records are deleted.
const MaxAudit = 100_000

// appendAudit appends records to the audit log in tx, setting each one's Seq.
func appendAudit(tx *bolt.Tx, records []flowmodel.AuditRecord) error {
	if len(records) == 0 {
		return nil
	}
	ab := tx.Bucket(bucketAudit)
	if ab == nil {
		return errors.New("audit log: bucket missing (store opened read-only?)")
	}
	for i := range records {
		seq, err := ab.NextSequence()
		if err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		a := records[i]
		a.Seq = seq
		a.At, _ = flowmodel.ClampTime(a.At)
		v, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		if err := ab.Put(seqKey(seq), seal(v, bucketAudit, seqKey(seq))); err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		records[i].Seq = seq
	}
	// Trim the oldest beyond MaxAudit.
	over := ab.Stats().KeyN - MaxAudit
	c := ab.Cursor()
	for k, _ := c.First(); k != nil && over > 0; k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
		over--
	}
	return nil
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// AuditQuery selects audit records: newest first, Limit of them (default 100, at most
// 1000), with Seq below Before (0: from the newest), of Service when set.
type AuditQuery struct {
	Service string
	Before  uint64
	Limit   int
}

// Audit returns the audit records q selects, newest first.
func (b *Bolt) Audit(q AuditQuery) ([]flowmodel.AuditRecord, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	q.Limit = min(q.Limit, 1000)
	out := []flowmodel.AuditRecord{}
	err := guard(b.db.Path(), func() error {
		return b.db.View(func(tx *bolt.Tx) error {
			ab := tx.Bucket(bucketAudit)
			if ab == nil {
				return nil
			}
			c := ab.Cursor()
			var k, v []byte
			if q.Before > 0 {
				if k, _ = c.Seek(seqKey(q.Before)); k == nil {
					k, v = c.Last()
				} else {
					k, v = c.Prev()
				}
			} else {
				k, v = c.Last()
			}
			for ; k != nil && len(out) < q.Limit; k, v = c.Prev() {
				var a flowmodel.AuditRecord
				v, err := b.unseal(v, bucketAudit, k)
				if err != nil {
					return b.undecodable(fmt.Errorf("audit record %d: %w", binary.BigEndian.Uint64(k), err))
				}
				if err := json.Unmarshal(v, &a); err != nil {
					return b.undecodable(fmt.Errorf("audit record %d: %w", binary.BigEndian.Uint64(k), err))
				}
				if q.Service != "" && a.Service != q.Service {
					continue
				}
				out = append(out, a)
			}
			return nil
		})
	})
	return out, err
}

// Token is an admin API token as stored: never the token itself, its SHA-256.
type Token struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	SHA256    []byte    `json:"sha256"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// Tokens returns every stored token, sorted by name.
func (b *Bolt) Tokens() ([]Token, error) {
	var out []Token
	err := guard(b.db.Path(), func() error {
		return b.db.View(func(tx *bolt.Tx) error {
			tb := tx.Bucket(bucketTokens)
			if tb == nil {
				return nil
			}
			return tb.ForEach(func(k, v []byte) error {
				var t Token
				v, err := b.unseal(v, bucketTokens, k)
				if err != nil {
					return b.undecodable(fmt.Errorf("token %.100q: %w", k, err))
				}
				if err := json.Unmarshal(v, &t); err != nil {
					return b.undecodable(fmt.Errorf("token %.100q: %w", k, err))
				}
				t.Name = string(k)
				out = append(out, t)
				return nil
			})
		})
	})
	return out, err
}

// ErrTokenExists is returned by PutToken for a name already taken.
var ErrTokenExists = errors.New("a token of that name exists")

// PutToken stores a new token and its audit record in one synced transaction.
func (b *Bolt) PutToken(t Token, a *flowmodel.AuditRecord) error {
	if t.Name == "" || len(t.Name) > maxNameBytes {
		return errors.New("token name: empty or too long")
	}
	return guard(b.db.Path(), func() error {
		return b.db.Update(func(tx *bolt.Tx) error {
			tb := tx.Bucket(bucketTokens)
			if tb.Get([]byte(t.Name)) != nil {
				return fmt.Errorf("token %q: %w", t.Name, ErrTokenExists)
			}
			v, err := json.Marshal(t)
			if err != nil {
				return err
			}
			if err := tb.Put([]byte(t.Name), seal(v, bucketTokens, []byte(t.Name))); err != nil {
				return err
			}
			return auditOne(tx, a)
		})
	})
}

// DeleteToken deletes a token and stores the audit record in one synced transaction. It
// reports whether the token existed (nothing is written when it did not).
func (b *Bolt) DeleteToken(name string, a *flowmodel.AuditRecord) (bool, error) {
	found := false
	err := guard(b.db.Path(), func() error {
		return b.db.Update(func(tx *bolt.Tx) error {
			tb := tx.Bucket(bucketTokens)
			if tb.Get([]byte(name)) == nil {
				return nil
			}
			found = true
			if err := tb.Delete([]byte(name)); err != nil {
				return err
			}
			return auditOne(tx, a)
		})
	})
	return found, err
}

func auditOne(tx *bolt.Tx, a *flowmodel.AuditRecord) error {
	if a == nil {
		return nil
	}
	recs := []flowmodel.AuditRecord{*a}
	if err := appendAudit(tx, recs); err != nil {
		return err
	}
	a.Seq = recs[0].Seq
	return nil
}
