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
// returns, field for field and method for method (the Secure Boot state,
// DataVerified, descriptions); the differential test in tcglog_test.go holds
// it to that.

// tcgRecord is one record of an event log, as go-attestation's rawEvent:
// the Spec ID header of a crypto-agile log is not a record. It holds
// positions in fastLog.all rather than slices, to stay small: a log has
// hundreds of records.
type tcgRecord struct {
	pcr, typ         uint32
	start, data, end uint32 // the record is all[start:end], its data all[data:end]
	// digests, for each bank a quote covers (by position in the banks
	// parseFastLog was given): where the record's digest of that bank
	// starts in all, 0 when it has none (no digest starts a log).
	digests [4]uint32
}

// fastLog is a log parsed by parseFastLog.
type fastLog struct {
	all     []byte // the copy of the log the records point into
	agile   bool
	header  []byte // the Spec ID record of a crypto-agile log
	records []tcgRecord
}

// data returns the event data of r.
func (l *fastLog) data(r *tcgRecord) []byte { return l.all[r.data:r.end:r.end] }

// raw returns the whole record r as it appears in the log.
func (l *fastLog) raw(r *tcgRecord) []byte { return l.all[r.start:r.end:r.end] }

// digest returns r's digest of bank i, whose digests are size bytes, or
// nil when r has none.
func (l *fastLog) digest(r *tcgRecord, i, size int) []byte {
	o := int(r.digests[i])
	if o == 0 {
		return nil
	}
	return l.all[o : o+size : o+size]
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
// point into the copy.
func parseFastLog(raw []byte, banks []uint16) (*fastLog, bool) {
	if uint64(len(raw)) >= 1<<32-1 {
		return nil, false
	}
	raw = bytes.Clone(raw)
	l := &fastLog{all: raw}
	rec, p, ok := sha1Record(raw, 0)
	if !ok {
		return nil, false
	}
	var specAlgs []uint16 // algorithm IDs of a crypto-agile log, sizes from specAlgSize
	if d := l.data(&rec); rec.typ == uint32(eventTypeNoAction) && len(d) >= 28 {
		// TCG_EfiSpecIDEventStruct: signature, platformClass, versionMinor,
		// versionMajor, errata, uintnSize, numberOfAlgorithms, then the
		// algorithms and vendorInfoSize, vendorInfo.
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
		l.agile, l.header = true, l.raw(&rec)
	} else {
		rec.digests = sha1Digests(rec.start+8, banks)
		l.records = append(l.records, rec)
	}
	// Size the records from a first walk over the log, which only reads
	// sizes: logs hold hundreds of records.
	n := len(l.records)
	for q := p; q < len(raw); n++ {
		if l.agile {
			_, q, ok = agileRecord(raw, q, specAlgs, nil)
		} else {
			_, q, ok = sha1Record(raw, q)
		}
		if !ok {
			return nil, false
		}
	}
	l.records = slices.Grow(l.records, n)
	for p < len(raw) {
		if l.agile {
			rec, p, ok = agileRecord(raw, p, specAlgs, banks)
		} else {
			rec, p, ok = sha1Record(raw, p)
			if ok {
				rec.digests = sha1Digests(rec.start+8, banks)
			}
		}
		if !ok {
			return nil, false
		}
		l.records = append(l.records, rec)
	}
	return l, true
}

// sha1Digests places a SHA-1 format record's digest, at position d, at the
// SHA-1 bank.
func sha1Digests(d uint32, banks []uint16) (out [4]uint32) {
	for i, b := range banks {
		if b == uint16(tpm2.TPMAlgSHA1) {
			out[i] = d
		}
	}
	return out
}

// sha1Record parses the TCG_PCR_EVENT at position p of all, and returns
// the position after it.
func sha1Record(all []byte, p int) (tcgRecord, int, bool) {
	const hdr = 4 + 4 + 20 + 4
	b := all[p:]
	if len(b) < hdr {
		return tcgRecord{}, 0, false
	}
	size := binary.LittleEndian.Uint32(b[28:32])
	if uint64(size) > uint64(len(b)-hdr) {
		return tcgRecord{}, 0, false
	}
	end := p + hdr + int(size)
	return tcgRecord{
		pcr:   binary.LittleEndian.Uint32(b),
		typ:   binary.LittleEndian.Uint32(b[4:]),
		start: uint32(p),
		data:  uint32(p + hdr),
		end:   uint32(end),
	}, end, true
}

// agileRecord parses the TCG_PCR_EVENT2 at position p of all, whose
// digests are of the algorithms the Spec ID event declared, and returns
// the position after it.
func agileRecord(all []byte, p int, algs []uint16, banks []uint16) (tcgRecord, int, bool) {
	var rec tcgRecord
	b := all[p:]
	if len(b) < 12 {
		return rec, 0, false
	}
	rec.pcr = binary.LittleEndian.Uint32(b)
	rec.typ = binary.LittleEndian.Uint32(b[4:])
	n := binary.LittleEndian.Uint32(b[8:])
	q := 12
	for range n {
		if len(b)-q < 2 {
			return rec, 0, false
		}
		id := binary.LittleEndian.Uint16(b[q:])
		size := specAlgSize(id)
		if !slices.Contains(algs, id) || len(b)-q-2 < size {
			return rec, 0, false
		}
		for i, bank := range banks {
			if bank == id && rec.digests[i] == 0 {
				rec.digests[i] = uint32(p + q + 2) // the first digest of an algorithm counts
			}
		}
		q += 2 + size
	}
	if len(b)-q < 4 {
		return rec, 0, false
	}
	size := binary.LittleEndian.Uint32(b[q:])
	q += 4
	if uint64(size) > uint64(len(b)-q) {
		return rec, 0, false
	}
	end := q + int(size)
	rec.start, rec.data, rec.end = uint32(p), uint32(p+q), uint32(p+end)
	return rec, p + end, true
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
	for ri := range l.records {
		r := &l.records[ri]
		if r.pcr >= 24 {
			continue
		}
		for i := range quotes {
			st := &replays[i][r.pcr]
			if st.quoted == nil {
				continue
			}
			if r.typ == uint32(eventTypeNoAction) {
				if data := l.data(r); r.pcr == 0 && len(data) == 17 && bytes.HasPrefix(data, []byte("StartupLocality")) {
					st.locality = data[16]
				}
				continue
			}
			size := hashes[i].Size()
			d := l.digest(r, i, size)
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
	for k := range l.records {
		r := &l.records[k]
		if r.pcr >= 24 || replays[best][r.pcr].quoted == nil || r.typ == uint32(eventTypeNoAction) {
			continue
		}
		e := attest.Event{Index: int(r.pcr), Type: attest.EventType(r.typ), Data: l.data(r), Digest: l.digest(r, best, h.Size())}
		if !slices.Contains(out.PCRs, e.Index) {
			out.PCRs = append(out.PCRs, e.Index)
		}
		// The refusal is decided here; DataVerified of the other types
		// is worked out when a caller asks.
		if dataBound(e.Type) && !dataVerified(h, e.Index, e.Type, e.Data, e.Digest) {
			return nil, false // refused by go-attestation's path, with its message
		}
		ev := newEvent(e, h)
		ev.Index = k + offset
		out.Events = append(out.Events, ev)
	}
	slices.Sort(out.PCRs)
	if replays[best][7].extended { // else "PCR 7 was not verified"
		sb := &fastSecureBoot{log: l, hash: h, bank: best, replay: &replays[best]}
		out.sb = newLazySecureBoot(out.Events, sb.state)
	}
	return out, true
}

// fastSecureBoot has go-attestation read the Secure Boot state of a log the
// fast path decided, from the verified PCR 2 and 7 events of bank, when a
// caller asks (EventLog.SecureBoot, which then holds it to secureBootState).
type fastSecureBoot struct {
	log    *fastLog
	hash   crypto.Hash
	bank   int            // position of the bank in the records' digests
	replay *[24]pcrReplay // the bank's replay: which PCRs were extended, to which values
}

func (s *fastSecureBoot) state() (*attest.SecurebootState, string) {
	var events []attest.Event // as go-attestation's Verify returns them; ParseSecurebootState reads only PCRs 2 and 7
	for k := range s.log.records {
		r := &s.log.records[k]
		if (r.pcr == 2 || r.pcr == 7) && s.replay[r.pcr].extended && r.typ != uint32(eventTypeNoAction) {
			events = append(events, attest.Event{Index: int(r.pcr), Type: attest.EventType(r.typ), Data: s.log.data(r), Digest: s.log.digest(r, s.bank, s.hash.Size())})
		}
	}
	state, err := attest.ParseSecurebootState(events)
	if err == nil {
		return state, ""
	}
	// go-attestation's message names the event by its position in the log,
	// which only events from its own parser carry: have it parse a log of
	// just the events it reads (PCRs 2 and 7), in their places, or failing
	// that the whole log.
	if msg, ok := secureBootErr(s.log, s.hash, s.replay); ok {
		return nil, msg
	}
	el, err := attest.ParseEventLog(s.log.all)
	if err != nil {
		return nil, err.Error()
	}
	verified, err := el.Verify(replayedPCRs(s.hash, s.replay, func(int) bool { return true }))
	if err != nil {
		return nil, err.Error()
	}
	return parseSecureBoot(verified)
}

// replayedPCRs lists the PCRs of a bank's replay that events extended and
// want keeps, with the values the replay reached (the quoted ones: the
// fast path decided the log). Quoted PCRs without events are left out, as
// go-attestation's Verify accepts any value for them.
func replayedPCRs(h crypto.Hash, replay *[24]pcrReplay, want func(int) bool) []attest.PCR {
	var pcrs []attest.PCR
	for p := range replay {
		if replay[p].extended && want(p) {
			pcrs = append(pcrs, attest.PCR{Index: p, Digest: replay[p].value[:h.Size()], DigestAlg: h})
		}
	}
	return pcrs
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
func secureBootErr(l *fastLog, h crypto.Hash, replay *[24]pcrReplay) (string, bool) {
	sbPCR := func(p int) bool { return p == 2 || p == 7 }
	var buf bytes.Buffer
	buf.Write(l.header)
	last := -1
	for k, r := range l.records {
		if r.pcr < 24 && sbPCR(int(r.pcr)) && replay[r.pcr].quoted != nil {
			last = k
		}
	}
	for k := range l.records[:last+1] {
		r := &l.records[k]
		switch {
		case r.pcr < 24 && sbPCR(int(r.pcr)) && replay[r.pcr].quoted != nil:
			buf.Write(l.raw(r))
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
	events, err := el.Verify(replayedPCRs(h, replay, sbPCR))
	if err != nil {
		return "", false
	}
	_, err = attest.ParseSecurebootState(events)
	if err == nil {
		return "", false
	}
	return err.Error(), true
}
