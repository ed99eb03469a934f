package firmware

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/internal/fsutil"
)

// ServedTrustFile, in the release store's directory, holds the release
// trust set the fleet served last, in its canonical encoding: the format of
// a release_trust file, so that it can be put back as one.
const ServedTrustFile = "served-trust.json"

// ErrTrustChanged is wrapped by *TrustChangeError.
var ErrTrustChanged = errors.New("firmware: release trust changed without a signed rotation")

// TrustChangeError is RememberTrust's refusal: the configured release trust
// does not lead from the set the fleet served last (which devices hold) to
// the configured set through signed rotations. Devices would keep the set
// they hold and refuse the new keys and every release signed by them
// alone. Its message says how to rotate instead.
type TrustChangeError struct {
	Served     *verify.TrustSet // the set the fleet served last
	Configured *verify.TrustSet // the set the configuration leads to
	File       string           // where Served is recorded
}

func (e *TrustChangeError) Error() string {
	s, c := e.Served, e.Configured
	var b strings.Builder
	fmt.Fprintf(&b, "%v: the fleet last served the release trust set of sequence %d (%s; recorded in %s), "+
		"and release_trust with release_trust_rotations does not lead from it to the configured set of sequence %d (%s). "+
		"Devices hold the served set: they would keep it and refuse the new keys and every release signed by them alone. ",
		ErrTrustChanged, s.Sequence(), describeTrust(s), e.File, c.Sequence(), describeTrust(c))
	fmt.Fprintf(&b, "Put the served set back as release_trust (cp %s <release_trust>) and rotate to the new keys: "+
		"sigil firmware trust --sequence %d --threshold M NEW.pub... --out trust-%d.json; "+
		"sigil firmware sign --statement trust-%d.json --key K (or cosign sign-blob --new-bundle-format) with %d of the served keys and M of the new ones; "+
		"list the statement and its bundles under release_trust_rotations. "+
		"If the served keys are lost, devices cannot follow any rotation (they need their state reset and a new enrollment): then remove %s to accept the configured set as it is.",
		e.File, s.Sequence()+1, s.Sequence()+1, s.Sequence()+1, s.Threshold(), e.File)
	return b.String()
}

func (e *TrustChangeError) Unwrap() error { return ErrTrustChanged }

// describeTrust is a set's threshold and key IDs (shortened), for messages.
func describeTrust(t *verify.TrustSet) string {
	ids := t.KeyIDs()
	for i, id := range ids {
		if len(id) > 12 {
			ids[i] = id[:12] + "…"
		}
	}
	return fmt.Sprintf("%d of %d keys: %s", t.Threshold(), len(ids), strings.Join(ids, ", "))
}

// RememberTrust checks the fleet's release trust configuration against the
// set it served last, recorded in dir/ServedTrustFile, and records the set
// it serves from now on. chain is the configured release_trust followed by
// the sets its configured rotations lead to, in order, each verified with
// verify.Rotate; its last element is the set the fleet serves.
//
// Without a record (the fleet's first start with firmware on) it records
// chain's last. With one, the recorded set must be one of chain: devices
// that hold it reach the last through the signed rotations that follow it.
// Otherwise it returns a *TrustChangeError and records nothing. A record
// that is not a trust set is an error too.
func RememberTrust(dir string, chain []*verify.TrustSet) error {
	if len(chain) == 0 {
		return errors.New("firmware: RememberTrust: no trust set")
	}
	path := filepath.Join(dir, ServedTrustFile)
	last, err := chain[len(chain)-1].Marshal()
	if err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("firmware: served release trust: %w", err)
	default:
		servedSet, err := verify.ParseTrustSet(b)
		if err != nil {
			return fmt.Errorf("firmware: %s does not hold a release trust set (%w); put back the set the fleet served, or remove the file to accept the configured set", path, err)
		}
		if bytes.Equal(b, last) {
			return nil
		}
		if !reaches(b, chain) {
			return &TrustChangeError{Served: servedSet, Configured: chain[len(chain)-1], File: path}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	if err := fsutil.WriteFileAtomic(path, last, 0o644); err != nil {
		return fmt.Errorf("firmware: record served release trust: %w", err)
	}
	return nil
}

// reaches reports whether the set whose canonical encoding is served is one
// of chain.
func reaches(served []byte, chain []*verify.TrustSet) bool {
	for _, ts := range chain {
		if b, err := ts.Marshal(); err == nil && bytes.Equal(b, served) {
			return true
		}
	}
	return false
}
