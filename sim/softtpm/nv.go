package softtpm

import (
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
)

// nvIndex is an NV index in the TPM's memory: a monotonic counter, or data
// (the EK certificate).
type nvIndex struct {
	counter bool
	value   uint64 // counter value
	data    []byte // ordinary index contents
}

// SecurityVersion returns the value of the anti-rollback counter at
// tpm.SecurityVersionIndex, defining it first when it is not defined (as
// device/tpm does), so a new TPM reads 0.
func (t *TPM) SecurityVersion() (uint64, error) {
	return t.AdvanceCounter(tpm.SecurityVersionIndex, 0)
}

// AdvanceSecurityVersion raises the anti-rollback counter at
// tpm.SecurityVersionIndex to at least to (see AdvanceCounter).
func (t *TPM) AdvanceSecurityVersion(to uint64) (uint64, error) {
	return t.AdvanceCounter(tpm.SecurityVersionIndex, to)
}

// Counter returns the value of the NV counter at index, as device/tpm's
// Counter does: an index that is not defined is tpm.ErrCounterUndefined;
// an index that holds anything but a counter (the EK certificate) is
// refused with tpm.ErrNotCounter; a handle that is not an NV index is an
// error.
func (t *TPM) Counter(index uint32) (uint64, error) {
	if err := checkNVIndex(index); err != nil {
		return 0, fmt.Errorf("softtpm: read counter: %w", err)
	}
	var v uint64
	err := t.do(fmt.Sprintf("read counter 0x%08x", index), func() error {
		n, err := t.counter(index)
		if err != nil {
			return err
		}
		if n == nil {
			return fmt.Errorf("%w: 0x%08x", tpm.ErrCounterUndefined, index)
		}
		v = n.value
		return nil
	})
	return v, err
}

// AdvanceCounter raises the NV counter at index until its value is at
// least to and returns its value then, with device/tpm's rules: the counter
// only goes up (a target at or below its value changes nothing); an
// undefined index is defined as a counter first; an index that is
// not a counter is refused with tpm.ErrNotCounter; a target more than
// tpm.MaxCounterAdvance above the value is refused with tpm.ErrCounterJump
// and changes nothing.
func (t *TPM) AdvanceCounter(index uint32, to uint64) (uint64, error) {
	if err := checkNVIndex(index); err != nil {
		return 0, fmt.Errorf("softtpm: advance counter: %w", err)
	}
	var v uint64
	err := t.do(fmt.Sprintf("advance counter 0x%08x", index), func() error {
		n, err := t.counter(index)
		if err != nil {
			return err
		}
		if n == nil {
			n = &nvIndex{counter: true}
			t.nv[index] = n
		}
		if to <= n.value {
			v = n.value
			return nil
		}
		if to-n.value > tpm.MaxCounterAdvance {
			return fmt.Errorf("%w: value %d, target %d", tpm.ErrCounterJump, n.value, to)
		}
		n.value = to
		v = to
		return nil
	})
	if err != nil {
		return 0, err
	}
	return v, nil
}

// counter returns the counter at index, nil when index is not defined.
// The caller holds t.mu.
func (t *TPM) counter(index uint32) (*nvIndex, error) {
	n := t.nv[index]
	if n == nil || n.counter {
		return n, nil
	}
	return nil, fmt.Errorf("%w: 0x%08x has type %d and size %d", tpm.ErrNotCounter, index, tpm2.TPMNTOrdinary, len(n.data))
}

// checkNVIndex refuses handles that are not NV indexes.
func checkNVIndex(index uint32) error {
	if index>>24 != uint32(tpm2.TPMHTNVIndex) {
		return fmt.Errorf("handle 0x%08x is not an NV index", index)
	}
	return nil
}
