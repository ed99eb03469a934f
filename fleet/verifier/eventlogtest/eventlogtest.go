// Package eventlogtest writes TCG PC Client event logs in the
// crypto-agile format (a Spec ID event, then events with SHA-1 and
// SHA-256 digests), as a device's firmware leaves them in
// binary_bios_measurements, and tracks the PCR values the log replays to:
// a log for tests of event-log verification and policies.
package eventlogtest

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"hash"

	"github.com/google/go-tpm/tpm2"
)

// EV_NO_ACTION: an event that extends no PCR.
const evNoAction = 3

// Log is an event log being written.
type Log struct {
	buf bytes.Buffer
	n   int
	// SHA1 and SHA256 are the PCR values the events written so far
	// replay to, by PCR (a PCR with no event is absent).
	SHA1, SHA256 map[int][]byte
}

// New starts a log with its Spec ID event (SHA-1 and SHA-256 banks).
func New() *Log {
	l := &Log{SHA1: map[int][]byte{}, SHA256: map[int][]byte{}}
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, struct {
		Class                      uint32
		Minor, Major, Errata, Uint uint8
		N                          uint32
		A1, S1, A2, S2             uint16
		Vendor                     uint8
	}{0, 0, 2, 0, 2, 2, uint16(tpm2.TPMAlgSHA1), 20, uint16(tpm2.TPMAlgSHA256), 32, 0})
	binary.Write(&l.buf, binary.LittleEndian, struct {
		PCR, Type uint32
		Digest    [20]byte
		Size      uint32
	}{0, evNoAction, [20]byte{}, uint32(spec.Len())})
	l.buf.Write(spec.Bytes())
	l.n = 1
	return l
}

// Add appends an event of type typ into pcr, with data as its event data
// and the digests of measured (of data when measured is nil), and returns
// its index in the log.
func (l *Log) Add(pcr int, typ uint32, data, measured []byte) int {
	if measured == nil {
		measured = data
	}
	d1, d256 := sha1.Sum(measured), sha256.Sum256(measured)
	binary.Write(&l.buf, binary.LittleEndian, []uint32{uint32(pcr), typ, 2})
	binary.Write(&l.buf, binary.LittleEndian, uint16(tpm2.TPMAlgSHA1))
	l.buf.Write(d1[:])
	binary.Write(&l.buf, binary.LittleEndian, uint16(tpm2.TPMAlgSHA256))
	l.buf.Write(d256[:])
	binary.Write(&l.buf, binary.LittleEndian, uint32(len(data)))
	l.buf.Write(data)
	if typ != evNoAction {
		l.SHA1[pcr] = extend(sha1.New(), l.SHA1[pcr], d1[:])
		l.SHA256[pcr] = extend(sha256.New(), l.SHA256[pcr], d256[:])
	}
	l.n++
	return l.n - 1
}

// Bytes returns the log as written so far.
func (l *Log) Bytes() []byte { return l.buf.Bytes() }

// PCRs returns the PCR values of bank (SHA-1 or SHA-256) the log replays
// to.
func (l *Log) PCRs(bank tpm2.TPMAlgID) map[int][]byte {
	if bank == tpm2.TPMAlgSHA1 {
		return l.SHA1
	}
	return l.SHA256
}

// extend returns TPM2_PCR_Extend of v (zero when nil) with d.
func extend(h hash.Hash, v, d []byte) []byte {
	if v == nil {
		v = make([]byte, h.Size())
	}
	h.Write(v)
	h.Write(d)
	return h.Sum(nil)
}
