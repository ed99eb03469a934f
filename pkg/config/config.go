// Package config holds what sigild's and sigil serve's configuration files
// share: strict JSON loading (unknown keys are errors) and durations written
// as strings ("30s").
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// Duration is a time.Duration written as "30s" in JSON.
type Duration time.Duration

// UnmarshalJSON accepts a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("config: duration must be a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// NotExistError reports a configuration file that does not exist.
// errors.Is(err, fs.ErrNotExist) holds for it.
type NotExistError struct {
	Path string
	Err  error // the cause, from opening the file
}

func (e *NotExistError) Error() string { return "config: file " + e.Path + " does not exist" }

// Unwrap returns the cause.
func (e *NotExistError) Unwrap() error { return e.Err }

// Load decodes the JSON file at path into v, refusing unknown keys so that a
// typo is reported rather than ignored. A file that does not exist fails
// with a *NotExistError.
func Load(path string, v any) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &NotExistError{Path: path, Err: err}
	}
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("config: %s: %w", path, err)
	}
	return nil
}
