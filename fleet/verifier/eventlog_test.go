package verifier

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-iot/sigil/fleet/verifier/eventlogtest"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// ubuntuQuote stands for the verified quote of one bank of the Ubuntu
// machine: the fixture has no quote by an AK of ours, so the values are
// taken as VerifyQuote would have returned them.
func ubuntuQuote(t testing.TB, bank tpm2.TPMAlgID, pcrs ...int) *VerifiedQuote {
	t.Helper()
	vq := &VerifiedQuote{Hash: uint16(bank), PCRs: map[int][]byte{}}
	for p, h := range eventlogtest.UbuntuPCRs(bank) {
		if len(pcrs) == 0 || slices.Contains(pcrs, p) {
			b, err := hex.DecodeString(h)
			if err != nil {
				t.Fatal(err)
			}
			vq.PCRs[p] = b
		}
	}
	return vq
}

// logRecord locates one record of a crypto-agile log whose header declares
// SHA-1 and SHA-256 (in that order), as the Ubuntu fixture does.
type logRecord struct {
	pcr, typ      uint32
	start         int // offset of the record
	sha1, sha256  int // offsets of the digests
	data, dataLen int
}

func walkAgileLog(t testing.TB, raw []byte) []logRecord {
	t.Helper()
	// Record 0: the SHA-1 format Spec ID event, whose algorithm table gives
	// the digest sizes.
	size := int(binary.LittleEndian.Uint32(raw[28:32]))
	recs := []logRecord{{pcr: 0, typ: 3, sha1: 8, data: 32, dataLen: size}}
	sizes := map[uint16]int{}
	spec := raw[32 : 32+size]
	for i := range int(binary.LittleEndian.Uint32(spec[24:28])) {
		a := spec[28+4*i:]
		sizes[binary.LittleEndian.Uint16(a)] = int(binary.LittleEndian.Uint16(a[2:]))
	}
	off := 32 + size
	for off < len(raw) {
		r := logRecord{start: off, pcr: binary.LittleEndian.Uint32(raw[off:]), typ: binary.LittleEndian.Uint32(raw[off+4:])}
		n := int(binary.LittleEndian.Uint32(raw[off+8:]))
		off += 12
		for range n {
			alg := binary.LittleEndian.Uint16(raw[off:])
			off += 2
			switch tpm2.TPMAlgID(alg) {
			case tpm2.TPMAlgSHA1:
				r.sha1 = off
			case tpm2.TPMAlgSHA256:
				r.sha256 = off
			}
			if sizes[alg] == 0 {
				t.Fatalf("digest algorithm %#x not in the Spec ID event", alg)
			}
			off += sizes[alg]
		}
		r.dataLen = int(binary.LittleEndian.Uint32(raw[off:]))
		r.data = off + 4
		off = r.data + r.dataLen
		recs = append(recs, r)
	}
	return recs
}

// wantRefusalNaming fails unless err is an event log refusal whose public
// message contains every part.
func wantRefusalNaming(t *testing.T, err error, parts ...string) {
	t.Helper()
	wantRefusal(t, err, wire.ReasonEventLogInvalid)
	var we *wire.Error
	errors.As(err, &we)
	for _, p := range parts {
		if !strings.Contains(we.Message, p) {
			t.Errorf("public message %q does not name %q", we.Message, p)
		}
	}
}

func TestVerifyEventLogUbuntu(t *testing.T) {
	raw := eventlogtest.Ubuntu(t)
	recs := walkAgileLog(t, raw)
	sha1Q, sha256Q := ubuntuQuote(t, tpm2.TPMAlgSHA1), ubuntuQuote(t, tpm2.TPMAlgSHA256)
	for _, tc := range []struct {
		name   string
		quotes []*VerifiedQuote
		hash   tpm2.TPMAlgID
	}{
		{"sha256", []*VerifiedQuote{sha256Q}, tpm2.TPMAlgSHA256},
		{"sha1", []*VerifiedQuote{sha1Q}, tpm2.TPMAlgSHA1},
		{"both banks", []*VerifiedQuote{sha1Q, sha256Q}, tpm2.TPMAlgSHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			el, err := VerifyEventLog(raw, tc.quotes...)
			if err != nil {
				t.Fatal(err)
			}
			if el.Hash != uint16(tc.hash) || len(el.Banks) != len(tc.quotes) {
				t.Fatalf("hash %#x banks %v", el.Hash, el.Banks)
			}
			if want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}; !slices.Equal(el.PCRs, want) {
				t.Fatalf("PCRs %v, want %v", el.PCRs, want)
			}
			if len(el.Events) != 105 {
				t.Fatalf("%d events, want the 105 measurements of the log", len(el.Events))
			}
			for _, e := range el.Events {
				r := recs[e.Index] // the index is the record's position in the file
				if int(r.pcr) != e.PCR || r.dataLen != e.DataSize || !bytes.Equal(raw[r.data:r.data+len(e.Data)], e.Data) {
					t.Fatalf("%s is not record %d of the log", e.Label(), e.Index)
				}
				off := r.sha256
				if tc.hash == tpm2.TPMAlgSHA1 {
					off = r.sha1
				}
				if !bytes.Equal(raw[off:off+len(e.Digest)], e.Digest) {
					t.Fatalf("%s digest is not the log's %v digest", e.Label(), tc.hash)
				}
			}
			if el.SecureBoot() == nil || el.SecureBoot().Enabled || el.SecureBoot().ForbiddenHashes == 0 {
				t.Fatalf("secure boot %+v (%s), want disabled with a dbx", el.SecureBoot(), el.SecureBootErr())
			}
			byIndex := func(i int) Event {
				for _, e := range el.Events {
					if e.Index == i {
						return e
					}
				}
				t.Fatalf("no event %d", i)
				return Event{}
			}
			if e := byIndex(23); e.Type != "EV_EFI_BOOT_SERVICES_APPLICATION" || e.Description() != `\EFI\ubuntu\shimx64.efi` || e.DataVerified() {
				t.Fatalf("event 23: %+v", e)
			}
			if e := byIndex(96); e.PCR != 8 || !e.DataVerified() || !strings.HasPrefix(e.Description(), "kernel_cmdline: /boot/vmlinuz-5.11.0-1006-gcp") {
				t.Fatalf("event 96: %s verified %v", e.Label(), e.DataVerified())
			}
			if e := byIndex(3); e.Description() != "SecureBoot=0" || !e.DataVerified() {
				t.Fatalf("event 3: %s verified %v", e.Label(), e.DataVerified())
			}
		})
	}

	t.Run("quote of some PCRs", func(t *testing.T) {
		el, err := VerifyEventLog(raw, ubuntuQuote(t, tpm2.TPMAlgSHA256, 0, 7, 16))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(el.PCRs, []int{0, 7}) {
			t.Fatalf("PCRs %v, want [0 7]", el.PCRs)
		}
		for _, e := range el.Events {
			if e.PCR != 0 && e.PCR != 7 {
				t.Fatalf("%s on PCR %d returned, the quote did not prove it", e.Label(), e.PCR)
			}
		}
		// Without PCR 7, Secure Boot is not established.
		el, err = VerifyEventLog(raw, ubuntuQuote(t, tpm2.TPMAlgSHA256, 4))
		if err != nil {
			t.Fatal(err)
		}
		if el.SecureBoot() != nil || el.SecureBootErr() == "" {
			t.Fatalf("secure boot %+v established without PCR 7", el.SecureBoot())
		}
	})
}

func TestVerifyEventLogTampered(t *testing.T) {
	good := eventlogtest.Ubuntu(t)
	recs := walkAgileLog(t, good)
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name  string
		raw   []byte
		quote *VerifiedQuote
		parts []string
	}{
		{"separator data", edit(func(b []byte) { b[recs[8].data] ^= 1 }), nil,
			[]string{"event 8 (EV_SEPARATOR", "PCR 7 (Secure Boot state)", "data does not match its digest"}},
		{"EFI action data", edit(func(b []byte) { b[recs[14].data] ^= 1 }), nil,
			[]string{"event 14 (EV_EFI_ACTION", "PCR 4"}},
		{"Secure Boot variable digest", edit(func(b []byte) { b[recs[3].sha256] ^= 1 }), nil,
			[]string{"PCR 7 (Secure Boot state)", "sha256", "event 3 (EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=0)"}},
		{"Secure Boot variable value", edit(func(b []byte) { b[recs[3].data+recs[3].dataLen-1] ^= 1 }), nil,
			[]string{"event 3 (EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=1)", "PCR 7"}},
		{"boot loader digest", edit(func(b []byte) { b[recs[27].sha256+5] ^= 0x80 }), nil,
			[]string{"PCR 4 (boot loader)", "4 events", "no single event can be blamed"}},
		{"event removed", slices.Concat(good[:recs[95].start], good[recs[96].start:]), nil,
			[]string{"PCR 9 (kernel and initrd (grub))"}},
		{"SHA-1 digest, SHA-1 quote", edit(func(b []byte) { b[recs[27].sha1] ^= 1 }), ubuntuQuote(t, tpm2.TPMAlgSHA1),
			[]string{"PCR 4 (boot loader) in the sha1 bank"}},
		{"wrong PCR value", good, func() *VerifiedQuote {
			q := ubuntuQuote(t, tpm2.TPMAlgSHA256)
			q.PCRs[9][0] ^= 1
			return q
		}(), []string{"PCR 9 (kernel and initrd (grub)) in the sha256 bank", "the quote proves " + hex.EncodeToString(func() []byte {
			b, _ := hex.DecodeString(eventlogtest.UbuntuPCRs(tpm2.TPMAlgSHA256)[9])
			b[0] ^= 1
			return b[:4]
		}())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := tc.quote
			if q == nil {
				q = ubuntuQuote(t, tpm2.TPMAlgSHA256)
			}
			el, err := VerifyEventLog(tc.raw, q)
			if el != nil {
				t.Fatal("refused log returned")
			}
			wantRefusalNaming(t, err, tc.parts...)
		})
	}

	// A changed grub command line keeps the replay (the digest is what
	// counts) but loses its proof: policies must not trust it.
	raw := edit(func(b []byte) { b[recs[96].data+len("kernel_cmdline: ")] ^= 1 })
	el, err := VerifyEventLog(raw, ubuntuQuote(t, tpm2.TPMAlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range el.Events {
		if e.Index == 96 && e.DataVerified() {
			t.Fatal("altered command line reported as verified")
		}
	}

	// A digest changed in the SHA-256 bank fails a SHA-1 + SHA-256 quote.
	raw = edit(func(b []byte) { b[recs[27].sha256] ^= 1 })
	_, err = VerifyEventLog(raw, ubuntuQuote(t, tpm2.TPMAlgSHA1), ubuntuQuote(t, tpm2.TPMAlgSHA256))
	wantRefusalNaming(t, err, "PCR 4", "sha256")
}

func TestVerifyEventLogWindows(t *testing.T) {
	var dump struct {
		Log struct {
			Raw  []byte
			PCRs []struct {
				Index     int
				Digest    []byte
				DigestAlg int
			}
		}
	}
	if err := json.Unmarshal(eventlogtest.GoAttestation(t, "windows_gcp_shielded_vm.json"), &dump); err != nil {
		t.Fatal(err)
	}
	// The dump's PCR values are SHA-1 (crypto.SHA1 == 3) and were quoted by
	// an RSA AK of its own; take them as verified.
	q := &VerifiedQuote{Hash: uint16(tpm2.TPMAlgSHA1), PCRs: map[int][]byte{}}
	for _, p := range dump.Log.PCRs {
		if p.DigestAlg != 3 {
			t.Fatalf("PCR %d digest algorithm %d", p.Index, p.DigestAlg)
		}
		q.PCRs[p.Index] = p.Digest
	}
	el, err := VerifyEventLog(dump.Log.Raw, q)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("windows: %d events on PCRs %v", len(el.Events), el.PCRs)
	if len(el.Events) < 20 || el.Hash != uint16(tpm2.TPMAlgSHA1) {
		t.Fatalf("%d events in bank %#x", len(el.Events), el.Hash)
	}
	if el.SecureBoot() == nil || !el.SecureBoot().Enabled || len(el.SecureBoot().Authorities) == 0 {
		t.Fatalf("secure boot %+v (%s), want enabled with authorities", el.SecureBoot(), el.SecureBootErr())
	}
	t.Logf("windows: %d events on PCRs %v, Secure Boot authorities %q", len(el.Events), el.PCRs, el.SecureBoot().Authorities)

	q.PCRs[7] = bytes.Clone(q.PCRs[7])
	q.PCRs[7][19] ^= 1
	_, err = VerifyEventLog(dump.Log.Raw, q)
	wantRefusalNaming(t, err, "PCR 7 (Secure Boot state) in the sha1 bank")
}

func TestVerifyEventLogMalformed(t *testing.T) {
	q := ubuntuQuote(t, tpm2.TPMAlgSHA256)
	raw := eventlogtest.Ubuntu(t)
	for name, b := range map[string][]byte{
		"empty":     nil,
		"truncated": raw[:len(raw)-3],
		"garbage":   bytes.Repeat([]byte{0xff}, 64),
	} {
		_, err := VerifyEventLog(b, q)
		t.Run(name, func(t *testing.T) { wantRefusal(t, err, wire.ReasonEventLogInvalid) })
	}
	// The caller's mistakes are errors, not refusals.
	for name, quotes := range map[string][]*VerifiedQuote{
		"no quote":     nil,
		"nil quote":    {nil},
		"bank twice":   {q, q},
		"unknown bank": {{Hash: 0x0012, PCRs: map[int][]byte{0: make([]byte, 32)}}},
	} {
		_, err := VerifyEventLog(raw, quotes...)
		var we *wire.Error
		if err == nil || errors.As(err, &we) {
			t.Errorf("%s: error %v, want a plain error", name, err)
		}
	}
}

// quoteOf is the quote that l's events replay to in bank.
func quoteOf(l *eventlogtest.Log, bank tpm2.TPMAlgID) *VerifiedQuote {
	return &VerifiedQuote{Hash: uint16(bank), PCRs: maps.Clone(l.PCRs(bank))}
}

// efiVar encodes UEFI_VARIABLE_DATA.
func efiVar(name string, val []byte) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 16))
	binary.Write(&b, binary.LittleEndian, []uint64{uint64(len(name)), uint64(len(val))})
	for _, c := range name {
		binary.Write(&b, binary.LittleEndian, uint16(c))
	}
	b.Write(val)
	return b.Bytes()
}

// imageLoad encodes UEFI_IMAGE_LOAD_EVENT with a file path device path.
func imageLoad(path string) []byte {
	var node bytes.Buffer
	for _, c := range path + "\x00" {
		binary.Write(&node, binary.LittleEndian, uint16(c))
	}
	var dp bytes.Buffer
	dp.Write([]byte{4, 4})
	binary.Write(&dp, binary.LittleEndian, uint16(4+node.Len()))
	dp.Write(node.Bytes())
	dp.Write([]byte{0x7f, 0xff, 4, 0})
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, []uint64{0x1000, 0x2000, 0, uint64(dp.Len())})
	b.Write(dp.Bytes())
	return b.Bytes()
}

func TestVerifyEventLogSynthetic(t *testing.T) {
	l := eventlogtest.New()
	l.Add(0, 3, []byte("StartupLocality\x00\x03"), nil) // TXT start-up locality: PCR 0 starts at 3
	l.SHA1[0], l.SHA256[0] = make([]byte, 20), make([]byte, 32)
	l.SHA1[0][19], l.SHA256[0][31] = 3, 3
	crtm := l.Add(0, 0x08, []byte("v\x001\x00.\x002\x00\x00\x00"), nil)
	sb := l.Add(7, 0x80000001, efiVar("SecureBoot", []byte{1}), nil)
	big := l.Add(7, 0x80000001, efiVar("db", bytes.Repeat([]byte{0xa5}, 3000)), nil)
	sep := l.Add(7, 0x04, []byte{0, 0, 0, 0}, nil)
	app := l.Add(4, 0x80000003, imageLoad(`\EFI\BOOT\BOOTAA64.EFI`), []byte("the PE image"))
	cmd := l.Add(8, 0x0D, []byte("kernel_cmdline: /vmlinuz root=/dev/sda1 ro\x00"), []byte("/vmlinuz root=/dev/sda1 ro"))
	l.Add(9, 0x0D, []byte("/vmlinuz\x00"), []byte("the kernel"))

	el, err := VerifyEventLog(l.Bytes(), quoteOf(l, tpm2.TPMAlgSHA256))
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{
		crtm: "event 2 (EV_S_CRTM_VERSION v1.2)", // 0: Spec ID, 1: start-up locality
		sb:   "event 3 (EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=1)",
		big:  "event 4 (EV_EFI_VARIABLE_DRIVER_CONFIG db)",
		sep:  "event 5 (EV_SEPARATOR separator)",
		app:  `event 6 (EV_EFI_BOOT_SERVICES_APPLICATION \EFI\BOOT\BOOTAA64.EFI)`,
		cmd:  "event 7 (EV_IPL kernel_cmdline: /vmlinuz root=/dev/sda1 ro)",
	}
	got := map[int]Event{}
	for _, e := range el.Events {
		got[e.Index] = e
	}
	for i, label := range want {
		e, ok := got[i]
		if !ok {
			t.Fatalf("event %d missing", i)
		}
		if e.Label() != label {
			t.Errorf("label %q, want %q", e.Label(), label)
		}
	}
	if e := got[big]; len(e.Data) != MaxEventData || e.DataSize <= MaxEventData || !e.DataVerified() {
		t.Errorf("large event: %d bytes kept of %d, verified %v", len(e.Data), e.DataSize, e.DataVerified())
	}
	if c, a := got[cmd], got[app]; !c.DataVerified() || a.DataVerified() {
		t.Errorf("command line verified %v, boot application data verified %v", c.DataVerified(), a.DataVerified())
	}
	// A db that does not parse: go-attestation refuses to call that a
	// Secure Boot state.
	if el.SecureBoot() != nil || el.SecureBootErr() == "" {
		t.Errorf("secure boot %+v (%s)", el.SecureBoot(), el.SecureBootErr())
	}
}

// FuzzVerifyEventLog feeds event logs to VerifyEventLog against the
// Ubuntu fixture's SHA-256 PCR values.
func FuzzVerifyEventLog(f *testing.F) {
	raw := eventlogtest.Ubuntu(f)
	f.Add(raw)
	f.Add(raw[:2000])
	l := eventlogtest.New()
	l.Add(7, 0x80000001, efiVar("SecureBoot", []byte{0}), nil)
	l.Add(4, 0x80000003, imageLoad(`\EFI\x.efi`), []byte("x"))
	f.Add(l.Bytes())
	q := ubuntuQuote(f, tpm2.TPMAlgSHA256)
	f.Fuzz(func(t *testing.T, raw []byte) {
		el, err := VerifyEventLog(raw, q)
		checkOutcome(t, el != nil, err)
		if el == nil {
			return
		}
		for _, e := range el.Events {
			if _, ok := q.PCRs[e.PCR]; !ok || len(e.Data) > MaxEventData || len(e.Digest) != 32 {
				t.Fatalf("%s: PCR %d, %d data bytes, %d digest bytes", e.Label(), e.PCR, len(e.Data), len(e.Digest))
			}
		}
	})
}
