package verifier

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"slices"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
)

// This file is VerifyEventLog's fast path: a strict parser for the TCG PC
// Client event log (SHA-1 and crypto-agile formats) and a replay of every
// bank in one pass over the events, allocation-light. It decides only the
// common case, a log that parses without surprises and replays exactly to
// every quoted value; anything else (an unknown or duplicated digest
// algorithm, a record that does not parse, a PCR that does not replay,
// whose explanation or firmware-bug workarounds go-attestation provides)
// returns ok false, and VerifyEventLog hands the log to go-attestation as
// before. When it returns ok, its result is the one go-attestation's path
// returns, field for field; the differential test in tcglog_test.go holds it
// to that.

// tcgRecord is one record of an event log, as go-attestation's rawEvent:
// the Spec ID header of a crypto-agile log is not a record.
type tcgRecord struct {
	pcr  uint32
	typ  uint32
	data []byte
	// digests, for each bank a quote covers (by position in
	// fastLog.banks): nil when the record has no digest of that bank.
	digests [4][]byte
	raw     []byte // the whole record as it appears in the log
}

// fastLog is a log parsed by parseFastLog.
type fastLog struct {
	agile   bool
	header  []byte // the Spec ID record of a crypto-agile log
	records []tcgRecord
}

// specAlgSize returns the digest size of a TCG algorithm go-attestation
// maps to a hash, or 0.
func specAlgSize(alg uint16) int {
	switch tpm2.TPMAlgID(alg) {
	case tpm2.TPMAlgSHA1:
		return 20
	case tpm2.TPMAlgSHA256:
		return 32
	case tpm2.TPMAlgSHA384:
		return 48
	case tpm2.TPMAlgSHA512:
		return 64
	}
	return 0
}

// parseFastLog parses raw, keeping for each record the digests of banks.
// It refuses (ok false) whatever it does not handle exactly as
// go-attestation's ParseEventLog does. raw is copied once; the records
// alias the copy.
func parseFastLog(raw []byte, banks []uint16) (*fastLog, bool) {
	const sha1Header = 4 + 4 + 20 + 4
	raw = bytes.Clone(raw)
	l := &fastLog{}
	rec, rest, ok := sha1Record(raw)
	if !ok {
		return nil, false
	}
	var specAlgs []uint16 // algorithm IDs of a crypto-agile log, sizes from specAlgSize
	if rec.typ == uint32(eventTypeNoAction) && len(rec.data) >= 28 {
		// TCG_EfiSpecIDEventStruct: signature, platformClass, versionMinor,
		// versionMajor, errata, uintnSize, numberOfAlgorithms, then the
		// algorithms and vendorInfoSize, vendorInfo.
		d := rec.data
		if !bytes.Equal(d[:16], []byte("Spec ID Event03\x00")) || d[20] != 0 || d[21] != 2 {
			return nil, false
		}
		n := binary.LittleEndian.Uint32(d[24:28])
		d = d[28:]
		if uint64(n)*4 >= uint64(len(d)) {
			return nil, false
		}
		for range n {
			id, size := binary.LittleEndian.Uint16(d), binary.LittleEndian.Uint16(d[2:])
			if specAlgSize(id) == 0 || int(size) != specAlgSize(id) || slices.Contains(specAlgs, id) {
				return nil, false
			}
			specAlgs = append(specAlgs, id)
			d = d[4:]
		}
		if int(d[0]) != len(d)-1 {
			return nil, false
		}
		l.agile, l.header = true, rec.raw
	} else {
		rec.digests = sha1Digests(rec.raw[8:sha1Header-4], banks)
		l.records = append(l.records, rec)
	}
	// Size the records from a first walk over the log, which only reads
	// sizes: a record is a few hundred bytes and logs hold hundreds.
	n := len(l.records)
	for b := rest; len(b) > 0; n++ {
		if l.agile {
			_, b, ok = agileRecord(b, specAlgs, nil)
		} else {
			_, b, ok = sha1Record(b)
		}
		if !ok {
			return nil, false
		}
	}
	l.records = slices.Grow(l.records, n)
	for len(rest) > 0 {
		if l.agile {
			rec, rest, ok = agileRecord(rest, specAlgs, banks)
		} else {
			rec, rest, ok = sha1Record(rest)
			if ok {
				rec.digests = sha1Digests(rec.raw[8:sha1Header-4], banks)
			}
		}
		if !ok {
			return nil, false
		}
		l.records = append(l.records, rec)
	}
	return l, true
}

// sha1Digests places a SHA-1 format record's digest at the SHA-1 bank.
func sha1Digests(d []byte, banks []uint16) (out [4][]byte) {
	for i, b := range banks {
		if b == uint16(tpm2.TPMAlgSHA1) {
			out[i] = d
		}
	}
	return out
}

// sha1Record parses a TCG_PCR_EVENT.
func sha1Record(b []byte) (tcgRecord, []byte, bool) {
	const hdr = 4 + 4 + 20 + 4
	if len(b) < hdr {
		return tcgRecord{}, nil, false
	}
	size := binary.LittleEndian.Uint32(b[28:32])
	if uint64(size) > uint64(len(b)-hdr) {
		return tcgRecord{}, nil, false
	}
	end := hdr + int(size)
	return tcgRecord{
		pcr:  binary.LittleEndian.Uint32(b),
		typ:  binary.LittleEndian.Uint32(b[4:]),
		data: b[hdr:end:end],
		raw:  b[:end:end],
	}, b[end:], true
}

// agileRecord parses a TCG_PCR_EVENT2 whose digests are of the algorithms
// the Spec ID event declared.
func agileRecord(b []byte, algs []uint16, banks []uint16) (tcgRecord, []byte, bool) {
	var rec tcgRecord
	if len(b) < 12 {
		return rec, nil, false
	}
	rec.pcr = binary.LittleEndian.Uint32(b)
	rec.typ = binary.LittleEndian.Uint32(b[4:])
	n := binary.LittleEndian.Uint32(b[8:])
	p := 12
	for range n {
		if len(b)-p < 2 {
			return rec, nil, false
		}
		id := binary.LittleEndian.Uint16(b[p:])
		size := specAlgSize(id)
		if !slices.Contains(algs, id) || len(b)-p-2 < size {
			return rec, nil, false
		}
		d := b[p+2 : p+2+size : p+2+size]
		for i, bank := range banks {
			if bank == id && rec.digests[i] == nil {
				rec.digests[i] = d // the first digest of an algorithm counts
			}
		}
		p += 2 + size
	}
	if len(b)-p < 4 {
		return rec, nil, false
	}
	size := binary.LittleEndian.Uint32(b[p:])
	p += 4
	if uint64(size) > uint64(len(b)-p) {
		return rec, nil, false
	}
	end := p + int(size)
	rec.data, rec.raw = b[p:end:end], b[:end:end]
	return rec, b[end:], true
}

// pcrReplay is one quoted PCR's replay in one bank.
type pcrReplay struct {
	quoted   []byte // nil: the PCR is not in the quote
	value    [64]byte
	extended bool
	locality byte
}

// fastEventLog is VerifyEventLog's fast path; quotes are checked by the
// caller and best indexes the bank whose events are returned.
func fastEventLog(raw []byte, quotes []*VerifiedQuote, best int) (*EventLog, bool) {
	if len(quotes) > 4 {
		return nil, false
	}
	banks := make([]uint16, len(quotes))
	hashes := make([]crypto.Hash, len(quotes))
	replays := make([][24]pcrReplay, len(quotes))
	for i, q := range quotes {
		h, err := cryptoHash(q.Hash)
		if err != nil {
			return nil, false
		}
		banks[i], hashes[i] = q.Hash, h
		for pcr, v := range q.PCRs {
			if pcr < 0 || pcr >= 24 || v == nil {
				return nil, false
			}
			replays[i][pcr].quoted = v
		}
	}
	l, ok := parseFastLog(raw, banks)
	if !ok {
		return nil, false
	}

	// One pass: every record extends its PCR in every bank that quoted it.
	verified := 0
	var buf [128]byte
	for _, r := range l.records {
		if r.pcr >= 24 {
			continue
		}
		for i := range quotes {
			st := &replays[i][r.pcr]
			if st.quoted == nil {
				continue
			}
			if r.typ == uint32(eventTypeNoAction) {
				if r.pcr == 0 && len(r.data) == 17 && bytes.HasPrefix(r.data, []byte("StartupLocality")) {
					st.locality = r.data[16]
				}
				continue
			}
			d := r.digests[i]
			size := hashes[i].Size()
			if d == nil || len(d) != len(st.quoted) || len(d) != size {
				return nil, false // go-attestation decides (and explains) a missing digest
			}
			if !st.extended {
				clear(st.value[:size])
				st.value[size-1] = st.locality
				st.extended = true
			}
			n := copy(buf[copy(buf[:], st.value[:size]):], d) + size
			extendDigest(hashes[i], st.value[:0], buf[:n])
			if i == best {
				verified++
			}
		}
	}
	for i := range quotes {
		for pcr := range replays[i] {
			st := &replays[i][pcr]
			if st.extended && !hmac.Equal(st.value[:hashes[i].Size()], st.quoted) {
				return nil, false // go-attestation explains the failure
			}
		}
	}

	out := &EventLog{Hash: quotes[best].Hash, Banks: banks}
	h := hashes[best]
	offset := 0
	if isCryptoAgile(raw) {
		offset = 1
	}
	out.Events = make([]Event, 0, verified)
	var sbEvents []attest.Event // the verified events, as go-attestation returns them
	sb := quotes[best].PCRs[7] != nil && replays[best][7].extended
	if sb {
		sbEvents = make([]attest.Event, 0, verified)
	}
	for k, r := range l.records {
		if r.pcr >= 24 || replays[best][r.pcr].quoted == nil || r.typ == uint32(eventTypeNoAction) {
			continue
		}
		e := attest.Event{Index: int(r.pcr), Type: attest.EventType(r.typ), Data: r.data, Digest: r.digests[best]}
		if sb {
			sbEvents = append(sbEvents, e)
		}
		if !slices.Contains(out.PCRs, e.Index) {
			out.PCRs = append(out.PCRs, e.Index)
		}
		ev := newEvent(e, h)
		ev.Index = k + offset
		if dataBound(e.Type) && !ev.DataVerified {
			return nil, false // refused by go-attestation's path, with its message
		}
		out.Events = append(out.Events, ev)
	}
	slices.Sort(out.PCRs)
	if !sb {
		out.SecureBootErr = "PCR 7 was not verified"
		return out, true
	}
	state, err := attest.ParseSecurebootState(sbEvents)
	if err == nil {
		out.SecureBoot = secureBootState(state)
		return out, true
	}
	// go-attestation's message names the event by its position in the log,
	// which only events from its own parser carry: have it parse a log of
	// just the events it reads (PCRs 2 and 7), in their places.
	msg, ok := secureBootErr(l, quotes[best])
	if !ok {
		return nil, false
	}
	out.SecureBootErr = msg
	return out, true
}

// extendDigest appends the hash h of b to dst, without allocating.
func extendDigest(h crypto.Hash, dst, b []byte) {
	switch h {
	case crypto.SHA1:
		d := sha1.Sum(b)
		copy(dst[:h.Size()], d[:])
	case crypto.SHA256:
		d := sha256.Sum256(b)
		copy(dst[:h.Size()], d[:])
	case crypto.SHA384:
		d := sha512.Sum384(b)
		copy(dst[:h.Size()], d[:])
	case crypto.SHA512:
		d := sha512.Sum512(b)
		copy(dst[:h.Size()], d[:])
	}
}

// secureBootErr returns go-attestation's explanation of why the verified
// PCR 2 and 7 events of l do not establish a Secure Boot state, by having it
// parse and replay a copy of l in which every other record is an empty
// record on a PCR no quote has.
func secureBootErr(l *fastLog, q *VerifiedQuote) (string, bool) {
	var buf bytes.Buffer
	buf.Write(l.header)
	var pcrs []attest.PCR
	h, _ := cryptoHash(q.Hash)
	for _, p := range []int{2, 7} {
		if v, ok := q.PCRs[p]; ok {
			pcrs = append(pcrs, attest.PCR{Index: p, Digest: v, DigestAlg: h})
		}
	}
	last := -1
	for k, r := range l.records {
		if (r.pcr == 2 || r.pcr == 7) && q.PCRs[int(r.pcr)] != nil {
			last = k
		}
	}
	for _, r := range l.records[:last+1] {
		switch {
		case (r.pcr == 2 || r.pcr == 7) && q.PCRs[int(r.pcr)] != nil:
			buf.Write(r.raw)
		case l.agile: // PCR 0xffffffff, EV_PREBOOT_CERT, no digest, no data
			buf.Write([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
		default:
			buf.Write([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
			buf.Write(make([]byte, 20+4))
		}
	}
	el, err := attest.ParseEventLog(buf.Bytes())
	if err != nil {
		return "", false
	}
	events, err := el.Verify(pcrs)
	if err != nil {
		return "", false
	}
	_, err = attest.ParseSecurebootState(events)
	if err == nil {
		return "", false
	}
	return err.Error(), true
}
