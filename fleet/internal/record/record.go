// Package record encodes the fleet stores' values as versioned JSON
// records, {"v": N, "data": …}, so that a store can tell a value written by
// a newer schema from one it understands.
package record

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrVersion is returned by Decode for a record of an unknown version.
var ErrVersion = errors.New("unsupported record version")

type envelope[T any] struct {
	V    int `json:"v"`
	Data T   `json:"data"`
}

// Encode wraps v in a record of the given version.
func Encode[T any](version int, v *T) ([]byte, error) {
	return json.Marshal(envelope[*T]{V: version, Data: v})
}

// Decode unwraps a record of a version from 1 to max.
func Decode[T any](max int, b []byte) (*T, error) {
	var r envelope[*T]
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if r.V < 1 || r.V > max || r.Data == nil {
		return nil, fmt.Errorf("%w %d", ErrVersion, r.V)
	}
	return r.Data, nil
}
