package softtpm_test

// Benchmarks of the software TPM (docs/BENCHMARKS.md, "Software TPM"):
//
//	go test -run '^$' -bench . -benchmem ./sim/softtpm/
//	go test -run '^$' -bench DeviceIdentity -benchtime 20000x -benchmem ./sim/softtpm/

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"runtime"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/verifier"
	"github.com/sigil-iot/sigil/pkg/wire"
	"github.com/sigil-iot/sigil/sim/softtpm"
)

// device is what a simulated device holds: its TPM and the blobs its state
// store keeps.
type device struct {
	tpm    *softtpm.TPM
	ek     *tpm.EK
	ak, tk *tpm.KeyBlob
}

// newDevice manufactures a TPM and creates the device's identity, as a
// first start of sigild does: EK (and certificate), AK, transport key.
func newDevice(b *testing.B, ca *softtpm.CA) device {
	tp, err := softtpm.New(softtpm.WithCA(ca))
	if err != nil {
		b.Fatal(err)
	}
	ek, err := tp.EK()
	if err != nil {
		b.Fatal(err)
	}
	ak, err := tp.CreateAK()
	if err != nil {
		b.Fatal(err)
	}
	tk, err := tp.CreateTransportKey()
	if err != nil {
		b.Fatal(err)
	}
	return device{tp, ek, ak, tk}
}

// BenchmarkDeviceIdentity creates whole device identities (a TPM with its
// EK and EK certificate, an AK and a transport key) and keeps them all, to
// report the heap each device holds (retained-B/device: the TPM and the
// blobs, after a GC) and the bytes its state store keeps (stored-B/device:
// EK public area and certificate, key blobs). "+signer" also keeps a
// transport key signer that has signed once, as a device with an mTLS
// session does. Run it with -benchtime 20000x for 20,000 devices.
func BenchmarkDeviceIdentity(b *testing.B) {
	ca, err := softtpm.NewCA()
	if err != nil {
		b.Fatal(err)
	}
	for _, withSigner := range []bool{false, true} {
		name := "keys"
		if withSigner {
			name = "keys+signer"
		}
		b.Run(name, func(b *testing.B) {
			devices := make([]device, 0, b.N)
			signers := make([]crypto.Signer, 0, b.N)
			digest := sha256.Sum256(nil)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			report := cpuTime(b)
			for range b.N {
				d := newDevice(b, ca)
				devices = append(devices, d)
				if withSigner {
					s, err := d.tpm.Signer(d.tk)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
						b.Fatal(err)
					}
					signers = append(signers, s)
				}
			}
			b.StopTimer()
			report()
			runtime.GC()
			runtime.ReadMemStats(&after)
			stored := 0
			for _, d := range devices {
				stored += len(d.ek.Public) + len(d.ek.Cert) + len(d.ak.Public) + len(d.ak.Private) + len(d.tk.Public) + len(d.tk.Private)
			}
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "retained-B/device")
			b.ReportMetric(float64(stored)/float64(b.N), "stored-B/device")
			runtime.KeepAlive(devices)
			runtime.KeepAlive(signers)
		})
	}
}

// BenchmarkManufacture is New with a CA: the EK derived from a fresh seed
// and its certificate issued.
func BenchmarkManufacture(b *testing.B) {
	ca, err := softtpm.NewCA()
	if err != nil {
		b.Fatal(err)
	}
	report := cpuTime(b)
	for b.Loop() {
		if _, err := softtpm.New(softtpm.WithCA(ca)); err != nil {
			b.Fatal(err)
		}
	}
	report()
}

// BenchmarkOps measures each operation sigild performs, on one device.
func BenchmarkOps(b *testing.B) {
	ca, err := softtpm.NewCA()
	if err != nil {
		b.Fatal(err)
	}
	d := newDevice(b, ca)
	tp := d.tpm
	vek, err := (&verifier.EKTrust{Roots: ca.Roots(), Intermediates: ca.Intermediates()}).VerifyEK(d.ek.Public, d.ek.Cert, nil)
	if err != nil {
		b.Fatal(err)
	}
	vak, err := verifier.VerifyAK(d.ak.Public)
	if err != nil {
		b.Fatal(err)
	}
	nonce := make([]byte, 32)
	sel := wire.DefaultSelection()
	digest := sha256.Sum256([]byte("x"))

	b.Run("EK", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.EK(); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("CreateAK", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.CreateAK(); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("CreateTransportKey", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.CreateTransportKey(); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("Certify", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if _, _, err := tp.Certify(d.ak, d.tk, nonce); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("Quote", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.Quote(d.ak, nonce, sel); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("Sign", func(b *testing.B) { // TPM2_Sign with the transport key loaded once
		s, err := tp.Signer(d.tk)
		if err != nil {
			b.Fatal(err)
		}
		report := cpuTime(b)
		for b.Loop() {
			if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("SignerFirstSign", func(b *testing.B) { // a new Signer loads the blob
		report := cpuTime(b)
		for b.Loop() {
			s, err := tp.Signer(d.tk)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("ActivateCredential", func(b *testing.B) {
		blob, enc, err := verifier.MakeCredential(rand.Reader, vek, vak, nonce)
		if err != nil {
			b.Fatal(err)
		}
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.ActivateCredential(d.ak, blob, enc); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	pcrs := wire.PCRSelection{Hash: uint16(tpm2.TPMAlgSHA256), PCRs: []int{16}}
	values, err := tp.ReadPCRs(pcrs)
	if err != nil {
		b.Fatal(err)
	}
	wrapped, err := secrets.Wrap(rand.Reader, d.ek.Public, make([]byte, 64), &pcrs, values)
	if err != nil {
		b.Fatal(err)
	}
	var sealed *tpm.SealedBlob
	b.Run("ImportSecret", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if sealed, err = tp.ImportSecret(wrapped.Public, wrapped.Duplicate, wrapped.Seed, wrapped.PCRs); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("Unseal", func(b *testing.B) { // PCR-bound
		if sealed == nil { // ImportSecret did not run
			if sealed, err = tp.ImportSecret(wrapped.Public, wrapped.Duplicate, wrapped.Seed, wrapped.PCRs); err != nil {
				b.Fatal(err)
			}
		}
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.Unseal(sealed); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("ReadPCRs", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.ReadPCRs(sel); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("ExtendPCR", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if err := tp.ExtendPCR(23, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("AdvanceCounter", func(b *testing.B) {
		v := uint64(0)
		report := cpuTime(b)
		for b.Loop() {
			v++
			if _, err := tp.AdvanceCounter(0x01800400, v); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("Counter", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if _, err := tp.SecurityVersion(); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
	b.Run("Reboot", func(b *testing.B) {
		report := cpuTime(b)
		for b.Loop() {
			if err := tp.Reboot(); err != nil {
				b.Fatal(err)
			}
		}
		report()
	})
}

// BenchmarkActivateCredentialRSA is ActivateCredential with an RSA-2048
// EK (WithRSAEK), the kind swtpm and most hardware TPMs have.
func BenchmarkActivateCredentialRSA(b *testing.B) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	tp, err := softtpm.New(softtpm.WithRSAEK(key))
	if err != nil {
		b.Fatal(err)
	}
	ak, blob, enc := credential(b, tp, make([]byte, 32))
	report := cpuTime(b)
	for b.Loop() {
		if _, err := tp.ActivateCredential(ak, blob, enc); err != nil {
			b.Fatal(err)
		}
	}
	report()
}

// cpuTime starts measuring the CPU time (user and system, the garbage
// collector's included) the process spends; the function it returns
// reports it per operation as cpu-ns/op. On a machine shared with other
// jobs, wall-clock ns/op grows with the load; CPU time much less.
func cpuTime(b *testing.B) func() {
	start := processCPU()
	return func() { b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op") }
}

func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
