package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// MaxSignature bounds a checkpoint's signature (an ASN.1 DER ECDSA P-256
// signature is at most 72 bytes).
const MaxSignature = 128

// Checkpoint is a signed statement that entry Seq of the log has hash Head.
// Since every entry's hash covers its predecessor's, it vouches for the
// whole chain up to Seq.
type Checkpoint struct {
	Seq       uint64    `json:"seq"`
	Head      Hash      `json:"head"`
	Time      time.Time `json:"time"`      // when it was signed, UTC
	KeyID     string    `json:"key_id"`    // KeyID of the signing key; informative, not signed
	Signature []byte    `json:"signature"` // ASN.1 DER ECDSA over SHA-256 of Canonical
}

// Canonical returns the bytes the checkpoint's signature covers (package
// doc, "Canonical encoding").
func (c *Checkpoint) Canonical() []byte {
	b := make([]byte, 0, 4+len(checkpointDomain)+8+len(c.Head)+8)
	b = appendString(b, checkpointDomain)
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	b = append(b, c.Head[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(c.Time.UnixNano()))
}

// VerifySignature checks c's signature with pub, an ECDSA public key.
func (c *Checkpoint) VerifySignature(pub *ecdsa.PublicKey) error {
	digest := sha256.Sum256(c.Canonical())
	if !ecdsa.VerifyASN1(pub, digest[:], c.Signature) {
		return errors.New("audit: checkpoint signature does not verify")
	}
	return nil
}

// Checkpoint signs the current head of the log, stores the checkpoint and
// returns it. If the head already has a checkpoint, it returns that one
// without signing again. It fails with ErrEmpty on an empty log and with
// ErrNoSigner without Config.Signer.
//
// Call it before Export to cover every entry exported so far with a
// signature.
func (l *Log) Checkpoint(ctx context.Context) (Checkpoint, error) {
	if l.signer == nil {
		return Checkpoint{}, ErrNoSigner
	}
	if err := ctx.Err(); err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint: %w", err)
	}
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	l.mu.Lock()
	closed, seq, head, last, prev := l.closed, l.seq, l.head, l.last, l.lastCP
	l.mu.Unlock()
	if closed {
		return Checkpoint{}, ErrClosed
	}
	// Replicas sharing a database append to one chain: sign the head
	// stored, which may be past the last entry this one appended.
	err := l.db.View(ctx, func(tx kv.Tx) error {
		k, v := tx.Bucket(bucketEntries).Cursor().Last()
		if k == nil || binary.BigEndian.Uint64(k) <= seq {
			return nil
		}
		e, err := decodeStored(k, v)
		if err != nil {
			return err
		}
		seq, head, last = e.Seq, e.Hash, e.Time
		if cp := tx.Bucket(bucketCheckpoints).Get(k); cp != nil {
			return json.Unmarshal(cp, &prev)
		}
		return nil
	})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint: %w", err)
	}
	switch {
	case seq == 0:
		return Checkpoint{}, ErrEmpty
	case prev.Seq == seq && prev.Head == head:
		return prev, nil
	}
	now := l.now().Round(0).UTC()
	if now.Before(last) {
		now = last
	}
	cp := Checkpoint{Seq: seq, Head: head, Time: now, KeyID: l.keyID}
	digest := sha256.Sum256(cp.Canonical())
	sig, err := l.signer.Sign(l.rand, digest[:], crypto.SHA256)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint %d: sign: %w", seq, err)
	}
	cp.Signature = sig
	// A signer that returns a bad signature (wrong key, wrong encoding)
	// would make every later verification fail: refuse it now.
	if err := cp.VerifySignature(l.pub); err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint %d: signer's own signature does not verify with its public key", seq)
	}
	data, err := json.Marshal(&cp)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint %d: %w", seq, err)
	}
	err = l.db.Update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bucketCheckpoints)
		if v := b.Get(seqKey(seq)); v != nil {
			var other Checkpoint
			if json.Unmarshal(v, &other) == nil && other.Seq == seq && other.Head == head && other.VerifySignature(l.pub) == nil {
				cp = other // another replica signed this head meanwhile
				return nil
			}
			// Only possible when entries were removed from the end of the
			// log and new ones appended: keep the evidence.
			return fmt.Errorf("a checkpoint for entry %d is already stored: entries it covered were removed from the log", seq)
		}
		return b.Put(seqKey(seq), data)
	})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint %d: %w", seq, err)
	}
	l.mu.Lock()
	l.lastCP = cp
	l.mu.Unlock()
	l.log.Info("audit checkpoint", "seq", seq, "head", head.String(), "key_id", l.keyID)
	return cp, nil
}

// LastCheckpoint returns the newest checkpoint, or false when there is
// none.
func (l *Log) LastCheckpoint() (Checkpoint, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastCP, l.lastCP.Seq != 0
}

// Run signs a checkpoint every Config.CheckpointInterval when entries were
// appended since the last one, and a last one when ctx ends. A failed
// periodic checkpoint is logged and tried again at the next interval; a
// failed final one is returned. Without Config.Signer it returns
// ErrNoSigner at once. With Config.Leases the periodic checkpoints are
// signed under the lease LeaseCheckpoint, by one replica at a time; each
// replica still signs its final one. Close the log after Run has
// returned, so that the final checkpoint is written.
func (l *Log) Run(ctx context.Context) error {
	if l.signer == nil {
		return ErrNoSigner
	}
	var err error
	if l.leases == nil {
		err = l.checkpoints(ctx)
	} else {
		err = l.leases.Hold(ctx, LeaseCheckpoint, l.checkpoints)
	}
	if err != nil {
		return err
	}
	if _, err := l.Checkpoint(context.WithoutCancel(ctx)); err != nil && !errors.Is(err, ErrEmpty) {
		return fmt.Errorf("audit: final checkpoint: %w", err)
	}
	return nil
}

// checkpoints signs a checkpoint every interval until ctx ends (Run ends,
// or the lease is lost).
func (l *Log) checkpoints(ctx context.Context) error {
	tick := time.NewTicker(l.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if _, err := l.Checkpoint(ctx); err != nil && !errors.Is(err, ErrEmpty) && ctx.Err() == nil {
				l.log.Error("audit checkpoint failed", "err", err)
			}
		}
	}
}
