package governance

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/sigil-iot/sigil/fleet/internal/record"
	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

const recordVersion = 1

func encode[T any](v *T) ([]byte, error) {
	b, err := record.Encode(recordVersion, v)
	if err != nil {
		return nil, fmt.Errorf("governance: encode: %w", err)
	}
	return b, nil
}

func decode[T any](b []byte) (*T, error) {
	v, err := record.Decode[T](recordVersion, b)
	if err != nil {
		return nil, fmt.Errorf("governance: decode: %w", err)
	}
	return v, nil
}

// get decodes the value at key in bucket, or returns nil when absent.
func get[T any](tx kv.Tx, bucket, key []byte) (*T, error) {
	v := tx.Bucket(bucket).Get(key)
	if v == nil {
		return nil, nil
	}
	return decode[T](v)
}

func put[T any](tx kv.Tx, bucket, key []byte, v *T) error {
	b, err := encode(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(key, b)
}

func getCounter(tx kv.Tx, key []byte) uint64 {
	v := tx.Bucket(bucketMeta).Get(key)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func addCounter(tx kv.Tx, key []byte, delta int64) error {
	n := int64(getCounter(tx, key)) + delta
	if n < 0 {
		n = 0
	}
	return tx.Bucket(bucketMeta).Put(key, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// maxText bounds strings taken from untrusted input.
const maxText = 256

// clean makes untrusted text safe to store and show: valid UTF-8, no
// control characters, at most maxText bytes.
func clean(s string) string {
	if len(s) > 4*maxText {
		s = s[:4*maxText]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
	if len(s) <= maxText {
		return s
	}
	cut := maxText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// pageLimit applies the default page size (100) and its maximum (1000).
func pageLimit(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > 1000:
		return 1000
	}
	return n
}
