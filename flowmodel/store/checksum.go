package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	bolt "go.etcd.io/bbolt"
)

// Format version 2 seals every value with a CRC-32C of where it lives (its bucket path and
// key) and what it holds, appended as 4 bytes: bbolt keeps no checksums of its pages, so a
// flipped bit inside a value (a destination's name, a mode) would otherwise be read as
// data. A version 1 store is sealed when it is first opened for writing.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const sealLen = 4

func sum(v []byte, where ...[]byte) uint32 {
	c := uint32(0)
	for _, w := range where {
		c = crc32.Update(c, castagnoli, w)
		c = crc32.Update(c, castagnoli, []byte{0})
	}
	return crc32.Update(c, castagnoli, v)
}

// seal returns v with its checksum appended (in a new slice).
func seal(v []byte, where ...[]byte) []byte {
	out := make([]byte, len(v), len(v)+sealLen)
	copy(out, v)
	return binary.BigEndian.AppendUint32(out, sum(v, where...))
}

var errChecksum = errors.New("checksum mismatch")

// unseal returns the value of a sealed v, checking its checksum; a store of version 1 has
// no seals.
func (b *Bolt) unseal(v []byte, where ...[]byte) ([]byte, error) {
	if b.version < 2 {
		return v, nil
	}
	if len(v) < sealLen {
		return nil, fmt.Errorf("%w: value of %d bytes", errChecksum, len(v))
	}
	body, s := v[:len(v)-sealLen], binary.BigEndian.Uint32(v[len(v)-sealLen:])
	if sum(body, where...) != s {
		return nil, errChecksum
	}
	return body, nil
}

// sealAll rewrites every value of a version 1 store sealed, in tx.
func sealAll(tx *bolt.Tx) error {
	type kv struct{ k, v []byte }
	collect := func(bk *bolt.Bucket) []kv {
		var out []kv
		_ = bk.ForEach(func(k, v []byte) error {
			if v != nil { // not a nested bucket
				out = append(out, kv{bytes.Clone(k), bytes.Clone(v)})
			}
			return nil
		})
		return out
	}
	put := func(bk *bolt.Bucket, kvs []kv, where func(k []byte) [][]byte) error {
		for _, e := range kvs {
			if err := bk.Put(e.k, seal(e.v, where(e.k)...)); err != nil {
				return err
			}
		}
		return nil
	}
	root := tx.Bucket(bucketServices)
	var names [][]byte
	_ = root.ForEachBucket(func(k []byte) error { names = append(names, bytes.Clone(k)); return nil })
	for _, name := range names {
		sb := root.Bucket(name)
		if v := sb.Get(keyState); v != nil {
			if err := sb.Put(keyState, seal(bytes.Clone(v), name, keyState)); err != nil {
				return err
			}
		}
		for _, sub := range [][]byte{bucketDestinations, bucketShapes} {
			if bk := sb.Bucket(sub); bk != nil {
				if err := put(bk, collect(bk), func(k []byte) [][]byte { return [][]byte{name, sub, k} }); err != nil {
					return err
				}
			}
		}
	}
	for _, top := range [][]byte{bucketAudit, bucketTokens} {
		if bk := tx.Bucket(top); bk != nil {
			if err := put(bk, collect(bk), func(k []byte) [][]byte { return [][]byte{top, k} }); err != nil {
				return err
			}
		}
	}
	return nil
}
