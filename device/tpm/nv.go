package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// SecurityVersionIndex is the NV index of the device's firmware
// anti-rollback counter: a TPM_NT_COUNTER in the owner range of the TCG
// handle registry (0x01800000-0x01BFFFFF). Its value is the lowest security
// version the device accepts.
const SecurityVersionIndex uint32 = 0x01800100

// MaxCounterAdvance bounds the increments one AdvanceCounter call issues. A
// TPM counter moves one step per TPM2_NV_Increment, and every step is an NV
// write, so a target far above the current value is refused instead of
// wearing the TPM's NV.
const MaxCounterAdvance = 1 << 16

// PCRBank is the bank ExtendPCR extends: SHA-256.
const PCRBank = tpm2.TPMAlgSHA256

// Errors of the NV counter operations.
var (
	// ErrCounterUndefined is returned by Counter when no index is defined
	// at the handle. It never reads as 0: only SecurityVersion and
	// AdvanceCounter, which define the index, go on from there.
	ErrCounterUndefined = errors.New("tpm: NV counter not defined")
	// ErrCounterAttributes is matched by a *CounterIndexError: the index at
	// a counter's handle is not defined as sigild defines it.
	ErrCounterAttributes = errors.New("tpm: NV index not defined as sigild defines its counter")
	// ErrNotCounter is matched by a *CounterIndexError for an index that
	// is not an 8-byte TPM_NT_COUNTER at all: its value could be written
	// down, so it is not trusted as an anti-rollback floor.
	ErrNotCounter = errors.New("tpm: NV index is not a monotonic counter")
	// ErrCounterJump is returned by AdvanceCounter for a target more than
	// MaxCounterAdvance above the counter's value. Nothing is incremented.
	ErrCounterJump = errors.New("tpm: counter target too far above its value")
)

// CounterIndexError is returned when the NV index at a counter's handle is
// not the one sigild defines (see AdvanceCounter): another type or size,
// name algorithm, attributes, or an authorization policy. Only a holder of
// the owner or platform authorization defines NV indexes, so such an index
// was put there by someone else, and its value is not trusted as an
// anti-rollback floor; nothing reads or increments it. It matches
// ErrCounterAttributes, and also ErrNotCounter when the index is not an
// 8-byte counter.
type CounterIndexError struct {
	Index uint32
	// Mismatches says what differs from sigild's definition, one item
	// each, e.g. "attributes 0x02060016, want 0x02060012".
	Mismatches []string
	notCounter bool
}

func (e *CounterIndexError) Error() string {
	return fmt.Sprintf("tpm: NV index 0x%08x is not the counter sigild defines: %s", e.Index, strings.Join(e.Mismatches, "; "))
}

// Is matches ErrCounterAttributes, and ErrNotCounter for an index that is
// not an 8-byte counter.
func (e *CounterIndexError) Is(target error) bool {
	return target == ErrCounterAttributes || (e.notCounter && target == ErrNotCounter)
}

// SecurityVersion returns the value of the anti-rollback counter at
// SecurityVersionIndex. An index not defined yet (a new TPM, or one whose
// index was deleted) is defined first, as AdvanceCounter defines it, and
// logged: the counter then reads 0 until its first increment. An index
// defined otherwise is refused with a *CounterIndexError.
func (t *TPM) SecurityVersion() (uint64, error) {
	var v uint64
	err := t.do("read the anti-rollback counter", func(tr transport.TPM) error {
		h := tpm2.TPMHandle(SecurityVersionIndex)
		pub, _, err := counterPublic(tr, h)
		if err != nil {
			return err
		}
		if pub == nil {
			t.log.Warn("tpm: the anti-rollback counter is not defined; defining it (a new TPM, or its NV index was deleted)",
				"index", fmt.Sprintf("0x%08x", SecurityVersionIndex))
			if pub, _, err = defineCounter(tr, h); err != nil {
				return err
			}
		}
		v, err = readCounter(tr, h, pub)
		return err
	})
	return v, err
}

// AdvanceSecurityVersion raises the anti-rollback counter at
// SecurityVersionIndex to at least to (see AdvanceCounter).
func (t *TPM) AdvanceSecurityVersion(to uint64) (uint64, error) {
	return t.AdvanceCounter(SecurityVersionIndex, to)
}

// Counter returns the value of the NV counter at index. An index defined
// as AdvanceCounter defines it but never incremented reads as 0; an index
// not defined is ErrCounterUndefined; an index defined otherwise is refused
// with a *CounterIndexError.
//
// The counter is read with its own (empty) authorization, or the owner's
// when the index allows only that.
func (t *TPM) Counter(index uint32) (uint64, error) {
	if err := checkNVIndex(index); err != nil {
		return 0, fmt.Errorf("tpm: read counter: %w", err)
	}
	var v uint64
	err := t.do(fmt.Sprintf("read counter 0x%08x", index), func(tr transport.TPM) error {
		pub, _, err := counterPublic(tr, tpm2.TPMHandle(index))
		if err != nil {
			return err
		}
		if pub == nil {
			return fmt.Errorf("%w: 0x%08x", ErrCounterUndefined, index)
		}
		v, err = readCounter(tr, tpm2.TPMHandle(index), pub)
		return err
	})
	return v, err
}

// AdvanceCounter raises the NV counter at index until its value is at least
// to and returns the value it holds then, which may be above to: a counter
// only goes up, one step per TPM2_NV_Increment, and the TPM starts a counter
// that was never incremented at the highest value any counter it deleted
// ever had (so deleting and redefining the index cannot lower it). A target
// at or below the value changes nothing.
//
// An undefined index is defined first (TPM2_NV_DefineSpace under the owner
// hierarchy, empty owner password), even for a target of 0, as
// counterTemplate says: TPM_NT_COUNTER of 8 bytes, name algorithm SHA-256,
// no authorization policy, and the attributes OWNERWRITE (only the owner
// increments it), OWNERREAD and AUTHREAD with an empty index password
// (anyone on the device may read it), NO_DA, and not ORDERLY, so that every
// increment is written to NV before the command returns. An existing index
// is used only when it is exactly that (TPMA_NV_WRITTEN aside, which the
// first increment sets); any other is refused with a *CounterIndexError and
// left alone. A target more than MaxCounterAdvance steps away is refused
// with ErrCounterJump.
//
// A crash midway leaves the counter somewhere between its old value and
// to; calling AdvanceCounter again with the same target finishes the job.
func (t *TPM) AdvanceCounter(index uint32, to uint64) (uint64, error) {
	if err := checkNVIndex(index); err != nil {
		return 0, fmt.Errorf("tpm: advance counter: %w", err)
	}
	h := tpm2.TPMHandle(index)
	var v uint64
	err := t.do(fmt.Sprintf("advance counter 0x%08x", index), func(tr transport.TPM) error {
		pub, name, err := counterPublic(tr, h)
		if err != nil {
			return err
		}
		if pub == nil {
			if pub, name, err = defineCounter(tr, h); err != nil {
				return err
			}
		}
		if v, err = readCounter(tr, h, pub); err != nil {
			return err
		}
		if to <= v {
			return nil
		}
		if to-v > MaxCounterAdvance {
			return fmt.Errorf("%w: value %d, target %d", ErrCounterJump, v, to)
		}
		owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
		for v < to {
			_, err := tpm2.NVIncrement{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: h, Name: name}}.Execute(tr)
			if err != nil {
				return fmt.Errorf("increment: %w", err)
			}
			if !pub.Attributes.Written {
				// The first write sets TPMA_NV_WRITTEN, which changes the
				// index's name, and initializes the value (see above).
				if pub, name, err = counterPublic(tr, h); err != nil {
					return err
				}
				if pub == nil {
					return errors.New("counter vanished during increment")
				}
				if v, err = readCounter(tr, h, pub); err != nil {
					return err
				}
				continue
			}
			v++
		}
		// Read back what the TPM holds rather than trusting the arithmetic.
		v, err = readCounter(tr, h, pub)
		return err
	})
	if err != nil {
		return 0, err
	}
	return v, nil
}

// ExtendPCR extends PCR pcr (0-23) of the SHA-256 bank with digest, a
// SHA-256 digest: PCR := SHA-256(PCR || digest). Other banks are left as they
// are. The PCR is authorized with its empty password, as platform PCRs are.
func (t *TPM) ExtendPCR(pcr int, digest []byte) error {
	if pcr < 0 || pcr > 23 {
		return fmt.Errorf("tpm: extend PCR: index %d out of range 0-23", pcr)
	}
	if len(digest) != 32 {
		return fmt.Errorf("tpm: extend PCR %d: digest is %d bytes, want 32 (SHA-256)", pcr, len(digest))
	}
	return t.do(fmt.Sprintf("extend PCR %d", pcr), func(tr transport.TPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
				{HashAlg: PCRBank, Digest: append([]byte(nil), digest...)},
			}},
		}.Execute(tr)
		return err
	})
}

// checkNVIndex refuses handles that are not NV indexes.
func checkNVIndex(index uint32) error {
	if index>>24 != uint32(tpm2.TPMHTNVIndex) {
		return fmt.Errorf("handle 0x%08x is not an NV index", index)
	}
	return nil
}

// counterPublic returns the public area and name of the counter at h, nil
// when h is not defined, or a *CounterIndexError when the index is not
// defined as counterTemplate says.
func counterPublic(tr transport.TPM, h tpm2.TPMHandle) (*tpm2.TPMSNVPublic, tpm2.TPM2BName, error) {
	rsp, err := tpm2.NVReadPublic{NVIndex: h}.Execute(tr)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, tpm2.TPM2BName{}, nil
	}
	if err != nil {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("read NV public: %w", err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("read NV public: %w", err)
	}
	if err := checkCounterPublic(pub, counterTemplate(h)); err != nil {
		return nil, tpm2.TPM2BName{}, err
	}
	return pub, rsp.NVName, nil
}

// counterTemplate is the public area sigild defines a counter at h with
// (see AdvanceCounter).
func counterTemplate(h tpm2.TPMHandle) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: h,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:         tpm2.TPMNTCounter,
			OwnerWrite: true,
			OwnerRead:  true,
			AuthRead:   true,
			NoDA:       true,
		},
		DataSize: 8,
	}
}

// checkCounterPublic compares an index's public area, as the TPM reports
// it, with want: index, size, name algorithm, authorization policy and
// every attribute but TPMA_NV_WRITTEN.
func checkCounterPublic(got *tpm2.TPMSNVPublic, want tpm2.TPMSNVPublic) error {
	e := &CounterIndexError{Index: uint32(want.NVIndex)}
	if got.Attributes.NT != want.Attributes.NT || got.DataSize != want.DataSize {
		e.notCounter = true
		e.Mismatches = append(e.Mismatches, fmt.Sprintf("type %d and size %d, want a counter (%d) of %d bytes",
			got.Attributes.NT, got.DataSize, want.Attributes.NT, want.DataSize))
	}
	attrs := got.Attributes
	attrs.Written = false
	if g, w := nvAttributes(attrs), nvAttributes(want.Attributes); g != w {
		e.Mismatches = append(e.Mismatches, fmt.Sprintf("attributes 0x%08x, want 0x%08x", g, w))
	}
	if got.NameAlg != want.NameAlg {
		e.Mismatches = append(e.Mismatches, fmt.Sprintf("name algorithm 0x%04x, want 0x%04x", uint16(got.NameAlg), uint16(want.NameAlg)))
	}
	if len(got.AuthPolicy.Buffer) != 0 {
		e.Mismatches = append(e.Mismatches, fmt.Sprintf("an authorization policy (%d bytes), want none", len(got.AuthPolicy.Buffer)))
	}
	if got.NVIndex != want.NVIndex {
		e.Mismatches = append(e.Mismatches, fmt.Sprintf("index 0x%08x", uint32(got.NVIndex)))
	}
	if len(e.Mismatches) > 0 {
		return e
	}
	return nil
}

// nvAttributes is the TPMA_NV word of a.
func nvAttributes(a tpm2.TPMANV) uint32 {
	return binary.BigEndian.Uint32(tpm2.Marshal(a))
}

// defineCounter defines the counter at h as counterTemplate says and
// returns its public area and name, read back and checked.
func defineCounter(tr transport.TPM, h tpm2.TPMHandle) (*tpm2.TPMSNVPublic, tpm2.TPM2BName, error) {
	_, err := tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		PublicInfo: tpm2.New2B(counterTemplate(h)),
	}.Execute(tr)
	if err != nil && !errors.Is(err, tpm2.TPMRCNVDefined) {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("define counter: %w", err)
	}
	got, name, err := counterPublic(tr, h)
	if err == nil && got == nil {
		err = errors.New("define counter: index not defined after TPM2_NV_DefineSpace")
	}
	return got, name, err
}

// readCounter reads the counter's value; 0 when it was never incremented.
func readCounter(tr transport.TPM, h tpm2.TPMHandle, pub *tpm2.TPMSNVPublic) (uint64, error) {
	if !pub.Attributes.Written {
		return 0, nil
	}
	b, err := readNV(tr, h)
	if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("counter 0x%08x: read %d bytes, want 8", uint32(h), len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}
