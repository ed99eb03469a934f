// Package tpmsim plugs the in-process TPM 2.0 simulator (Microsoft's
// reference implementation, through go-tpm-tools' simulator package) into
// package tpm under the URI scheme "sim". Importing it is what selects it:
//
//	import _ "github.com/sigil-iot/sigil/device/tpm/tpmsim"
//
//	t, err := tpm.Open("sim://")
//
// It needs cgo and libcrypto (without cgo, "sim://" fails with a message
// saying so), and it must never be imported by cmd/sigild: the device binary
// talks only to real TPMs and swtpm. Tests, the simulator
// harness and development tools import it.
//
// There is one simulator per process (the reference implementation is a
// set of C globals). Every Open of "sim://" returns a handle to that same
// simulated TPM; the handles share it, and each tpm operation holds it
// exclusively from its first command to its last. The simulator is
// manufactured on the first Open and shut down when the last handle is
// closed; a later Open manufactures a new one, with new endorsement seeds.
// The simulator has no EK certificate, so tpm.EK returns the EK without one.
package tpmsim
