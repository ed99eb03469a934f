package state

import (
	"errors"
	"fmt"

	"github.com/sigil-iot/sigil/pkg/wire"
)

// ErrNoSSHHostKey is returned by SSHHostKey before the key was created.
var ErrNoSSHHostKey = errors.New("state: no SSH host key")

var (
	bucketSSH  = []byte("ssh")
	keySSHHost = []byte("host-key")
)

// SSHHostKey returns the TPM-wrapped blob of the device's TPM-born SSH
// host key, or ErrNoSSHHostKey.
func (s *Store) SSHHostKey() (*KeyBlob, error) {
	var out *KeyBlob
	err := s.db.View(func(tx Tx) error {
		b := tx.Bucket(bucketSSH)
		if b == nil {
			return ErrNoSSHHostKey
		}
		v := b.Get(keySSHHost)
		if v == nil {
			return ErrNoSSHHostKey
		}
		out = &KeyBlob{}
		return wire.Unmarshal(v, out)
	})
	if errors.Is(err, ErrNoSSHHostKey) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("state: read SSH host key: %w", err)
	}
	return out, nil
}

// PutSSHHostKey stores the blob of the TPM-born SSH host key.
func (s *Store) PutSSHHostKey(k *KeyBlob) error {
	if k == nil || len(k.Public) == 0 || len(k.Private) == 0 {
		return errors.New("state: save SSH host key: empty blob")
	}
	v, err := wire.Marshal(k)
	if err != nil {
		return fmt.Errorf("state: encode SSH host key: %w", err)
	}
	err = s.db.Update(func(tx Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketSSH)
		if err != nil {
			return err
		}
		return b.Put(keySSHHost, v)
	})
	if err != nil {
		return fmt.Errorf("state: save SSH host key: %w", err)
	}
	return nil
}
