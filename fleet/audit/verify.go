package audit

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// What verification found wrong; a *VerifyError wraps one of them.
var (
	// ErrEdited: an entry's hash does not match its contents, an entry does
	// not link to the one before it, or a checkpoint's signed head differs
	// from the chain's.
	ErrEdited = errors.New("audit: entry edited")
	// ErrMissing: a sequence number is skipped (an entry deleted), or a
	// checkpoint vouches for entries that are not there.
	ErrMissing = errors.New("audit: entry missing")
	// ErrReordered: an entry or checkpoint appears after a later one, or
	// twice.
	ErrReordered = errors.New("audit: entry out of order")
	// ErrBadSignature: a checkpoint's signature does not verify with the
	// key given (forged, altered, or signed by another key).
	ErrBadSignature = errors.New("audit: bad checkpoint signature")
	// ErrTruncated: the export ends before the last entry its header
	// announces, or in the middle of a line.
	ErrTruncated = errors.New("audit: export truncated")
	// ErrMalformed: a line (or stored record) is not a record this package
	// writes.
	ErrMalformed = errors.New("audit: malformed record")
)

// VerifyError locates what Verify or VerifyStore found wrong.
type VerifyError struct {
	Line   int    // 1-based line of the export; 0 when verifying the store
	Seq    uint64 // the entry named: the first bad one, as far as can be told (package doc); 0 for a malformed line
	Err    error  // ErrEdited, ErrMissing, ErrReordered, ErrBadSignature, ErrTruncated or ErrMalformed
	Detail string // what exactly, for people
}

// Error returns e.g. "audit: verify: line 7, entry 5: entry edited: its
// hash does not match its contents".
func (e *VerifyError) Error() string {
	var b strings.Builder
	b.WriteString("audit: verify: ")
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d, ", e.Line)
	} else if e.Seq > 0 {
		b.WriteString("stored ")
	}
	if e.Seq > 0 {
		fmt.Fprintf(&b, "entry %d: ", e.Seq)
	}
	b.WriteString(strings.TrimPrefix(e.Err.Error(), "audit: "))
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	return b.String()
}

// Unwrap returns the sentinel.
func (e *VerifyError) Unwrap() error { return e.Err }

// Report is what a verification established.
type Report struct {
	First   uint64 // first entry verified; 0 when there were none
	Last    uint64 // last entry verified
	Entries int
	Head    Hash // hash of entry Last
	// Checkpoints counts the checkpoints verified; Checkpoint is the last
	// of them (Seq 0 when none).
	Checkpoints int
	Checkpoint  Checkpoint
	// Unsigned counts the entries after the last checkpoint. Their hashes
	// and links are sound, but no signature vouches for them: whoever can
	// write the file could have changed, added or removed them.
	Unsigned int
}

// Verify checks an export (Export's output) offline with pub, the public
// key checkpoints are signed with (*ecdsa.PublicKey, P-256), and returns
// what it verified. It checks, line by line, stopping at the first
// problem:
//
//   - that line 1 is a header of this format and every line a record in
//     exactly the form Export writes (ErrMalformed);
//   - that each entry's Hash is SHA-256 of its canonical encoding
//     (ErrEdited);
//   - that sequence numbers run on by one from the header's First
//     (ErrMissing for a gap, ErrReordered for an entry that comes back or
//     repeats; a gap whose entry turns up later in the file is reported as
//     ErrReordered at that line);
//   - that each entry's Prev is the previous entry's Hash, and entry 1's
//     is zero (ErrEdited);
//   - that each checkpoint's signature verifies with pub (ErrBadSignature),
//     that it follows the entry it covers (ErrMissing, ErrReordered) and
//     that its Head is that entry's Hash (ErrEdited);
//   - that the export runs to its header's Last and ends with a whole line
//     (ErrTruncated).
//
// The error is a *VerifyError. Report.Unsigned says how many entries at
// the end no checkpoint covers; the package doc says what can and cannot
// be detected.
func Verify(r io.Reader, pub crypto.PublicKey) (Report, error) {
	c, err := newChain(pub)
	if err != nil {
		return Report{}, err
	}
	lr := &lineReader{r: bufio.NewReader(r)}
	n := 0
	for {
		b, rerr := lr.next()
		if b == nil && rerr == io.EOF {
			break
		}
		n++
		switch {
		case errors.Is(rerr, errLongLine):
			return Report{}, c.fail(n, ErrMalformed, "line longer than %d bytes", maxLine)
		case rerr == io.EOF:
			return Report{}, c.fail(n, ErrTruncated, "the last line ends without a newline: the export was cut")
		case rerr != nil:
			return Report{}, fmt.Errorf("audit: verify: read line %d: %w", n, rerr)
		}
		l, perr := parseLine(b[:len(b)-1])
		if perr != nil {
			return Report{}, c.fail(n, ErrMalformed, "%v", perr)
		}
		if n == 1 && l.Header == nil {
			return Report{}, c.fail(n, ErrMalformed, "line 1 is not a %s header", ExportFormat)
		}
		switch {
		case l.Header != nil && n > 1:
			err = c.fail(n, ErrMalformed, "a second header")
		case l.Header != nil:
			c.begin(*l.Header)
		case l.Entry != nil:
			err = c.entry(l.Entry, n)
		default:
			err = c.checkpoint(l.Checkpoint, n)
		}
		if err != nil {
			return Report{}, findLater(lr, n, err)
		}
	}
	if n == 0 {
		return Report{}, &VerifyError{Line: 1, Err: ErrTruncated, Detail: "the export is empty"}
	}
	if err := c.end(n + 1); err != nil {
		return Report{}, err
	}
	return c.rep, nil
}

// findLater turns a gap (ErrMissing) into ErrReordered when the missing
// entry is further down the export: it reads the rest of the lines for it.
func findLater(lr *lineReader, n int, err error) error {
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Err != ErrMissing {
		return err
	}
	for {
		b, rerr := lr.next()
		if b == nil && !errors.Is(rerr, errLongLine) {
			return err
		}
		n++
		var probe struct {
			Entry *struct {
				Seq uint64 `json:"seq"`
			} `json:"entry"`
		}
		if rerr == nil && json.Unmarshal(b, &probe) == nil && probe.Entry != nil && probe.Entry.Seq == ve.Seq {
			return &VerifyError{Line: n, Seq: ve.Seq, Err: ErrReordered,
				Detail: fmt.Sprintf("it comes later, at line %d, than line %d where it belongs (%s)", n, ve.Line, ve.Detail)}
		}
	}
}

// errLongLine reports a line longer than maxLine.
var errLongLine = errors.New("line too long")

// lineReader reads lines of at most maxLine bytes without allocating
// maxLine up front.
type lineReader struct {
	r   *bufio.Reader
	buf []byte
}

// next returns the next line with its newline, valid until the next call.
// At the end of the input it returns nil and io.EOF; a last line without a
// newline comes with io.EOF; a line longer than maxLine is skipped and
// reported as errLongLine (with a non-nil empty line).
func (lr *lineReader) next() ([]byte, error) {
	b, err := lr.r.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		if len(b) == 0 {
			return nil, err
		}
		return b, err
	}
	lr.buf = append(lr.buf[:0], b...)
	for errors.Is(err, bufio.ErrBufferFull) {
		b, err = lr.r.ReadSlice('\n')
		if len(lr.buf)+len(b) > maxLine+1 {
			for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of the line
				_, err = lr.r.ReadSlice('\n')
			}
			return []byte{}, errLongLine
		}
		lr.buf = append(lr.buf, b...)
	}
	return lr.buf, err
}

// chain checks a sequence of entries and checkpoints.
type chain struct {
	pub      *ecdsa.PublicKey
	keyID    string
	first    uint64 // the entry the input starts with (header)
	last     uint64 // the entry it ends with (header)
	started  bool   // an entry was seen
	lastLine int    // line of entry rep.Last
	cpSeq    uint64 // entry covered by the last checkpoint; 0 when none
	rep      Report
}

func newChain(pub crypto.PublicKey) (*chain, error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k == nil || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("audit: verify: key is %T, want an ECDSA P-256 public key", pub)
	}
	id, err := KeyID(k)
	if err != nil {
		return nil, err
	}
	return &chain{pub: k, keyID: id}, nil
}

// fail reports a problem with line at as a whole: a malformed line names
// no entry, a truncated export the first entry it lacks.
func (c *chain) fail(at int, err error, format string, args ...any) *VerifyError {
	seq := c.rep.Last + 1
	if !c.started {
		seq = c.first
	}
	if err == ErrMalformed {
		seq = 0
	}
	return &VerifyError{Line: at, Seq: seq, Err: err, Detail: fmt.Sprintf(format, args...)}
}

func (c *chain) begin(h Header) { c.first, c.last = h.First, h.Last }

// entry checks the next entry, found at line at.
func (c *chain) entry(e *Entry, at int) error {
	bad := func(seq uint64, err error, format string, args ...any) error {
		return &VerifyError{Line: at, Seq: seq, Err: err, Detail: fmt.Sprintf(format, args...)}
	}
	if e.ComputeHash() != e.Hash {
		return bad(e.Seq, ErrEdited, "its hash does not match its contents")
	}
	if e.Seq > c.last {
		return bad(e.Seq, ErrMalformed, "the header says the export ends at entry %d", c.last)
	}
	if !c.started {
		switch {
		case e.Seq > c.first:
			return bad(c.first, ErrMissing, "the export starts with entry %d, its header with entry %d", e.Seq, c.first)
		case e.Seq < c.first:
			return bad(e.Seq, ErrMalformed, "the header says the export starts at entry %d", c.first)
		case e.Seq == 1 && !e.Prev.IsZero():
			return bad(1, ErrEdited, "the first entry of the log must have a zero prev hash")
		}
		c.started, c.rep.First = true, e.Seq
	} else {
		switch {
		case e.Seq == c.rep.Last && e.Hash == c.rep.Head:
			return bad(e.Seq, ErrReordered, "it appears twice (lines %d and %d)", c.lastLine, at)
		case e.Seq <= c.rep.Last:
			return bad(e.Seq, ErrReordered, "it comes after entry %d (line %d)", c.rep.Last, c.lastLine)
		case e.Seq > c.rep.Last+1:
			return bad(c.rep.Last+1, ErrMissing, "entry %d follows entry %d", e.Seq, c.rep.Last)
		case e.Prev != c.rep.Head:
			return &VerifyError{Line: c.lastLine, Seq: c.rep.Last, Err: ErrEdited,
				Detail: fmt.Sprintf("entry %d (line %d) does not link to it: this entry%s was changed and the hashes after the change recomputed", e.Seq, at, c.since())}
		}
	}
	c.rep.Last, c.rep.Head, c.lastLine = e.Seq, e.Hash, at
	c.rep.Entries++
	return nil
}

// since describes where a rewrite may have started: after the last good
// checkpoint.
func (c *chain) since() string {
	if c.cpSeq == 0 {
		return fmt.Sprintf(" or an earlier one (from entry %d, no checkpoint before it)", c.rep.First)
	}
	if c.cpSeq == c.rep.Last {
		return ""
	}
	return fmt.Sprintf(" or an earlier one after entry %d (the last checkpoint)", c.cpSeq)
}

// checkpoint checks a checkpoint found at line at.
func (c *chain) checkpoint(cp *Checkpoint, at int) error {
	bad := func(seq uint64, err error, format string, args ...any) error {
		return &VerifyError{Line: at, Seq: seq, Err: err, Detail: fmt.Sprintf(format, args...)}
	}
	if err := cp.VerifySignature(c.pub); err != nil {
		detail := "the checkpoint's signature does not verify with the given key"
		if cp.KeyID != c.keyID {
			detail += fmt.Sprintf(" (it names key %s, the given key is %s)", clip(cp.KeyID, 64), c.keyID)
		}
		return bad(cp.Seq, ErrBadSignature, "%s", detail)
	}
	switch {
	case !c.started && cp.Seq >= c.first:
		return bad(c.first, ErrMissing, "a checkpoint for entry %d comes before any entry", cp.Seq)
	case !c.started:
		return bad(cp.Seq, ErrReordered, "a checkpoint for entry %d, before the export's first entry %d", cp.Seq, c.first)
	case cp.Seq == c.cpSeq:
		return bad(cp.Seq, ErrReordered, "a second checkpoint for the same entry")
	case cp.Seq < c.rep.Last:
		return bad(cp.Seq, ErrReordered, "its checkpoint comes after entry %d (line %d)", c.rep.Last, c.lastLine)
	case cp.Seq > c.rep.Last:
		return bad(c.rep.Last+1, ErrMissing, "a checkpoint for entry %d follows entry %d: entries %d to %d are not there", cp.Seq, c.rep.Last, c.rep.Last+1, cp.Seq)
	case cp.Head != c.rep.Head:
		from := max(c.cpSeq+1, c.rep.First)
		return bad(cp.Seq, ErrEdited, "the checkpoint signed head %s, the chain's is %s: an entry from %d to %d was changed and the hashes after it recomputed", cp.Head, c.rep.Head, from, cp.Seq)
	}
	c.cpSeq = cp.Seq
	c.rep.Checkpoints++
	c.rep.Checkpoint = *cp
	return nil
}

// end checks the input ended where its header said, at line at.
func (c *chain) end(at int) error {
	if !c.started && c.last >= c.first {
		return &VerifyError{Line: at, Seq: c.first, Err: ErrTruncated, Detail: fmt.Sprintf("no entries, the header announces %d to %d", c.first, c.last)}
	}
	if c.started && c.rep.Last < c.last {
		return &VerifyError{Line: at, Seq: c.rep.Last + 1, Err: ErrTruncated, Detail: fmt.Sprintf("it ends after entry %d, the header announces entries to %d", c.rep.Last, c.last)}
	}
	if c.started {
		c.rep.Unsigned = int(c.rep.Last - max(c.cpSeq, c.rep.First-1))
	}
	return nil
}

// VerifyStore checks the live log as Verify checks an export (every entry
// and checkpoint up to the head when it starts) and returns what it
// verified. pub nil means the public key of Config.Signer. Errors are
// *VerifyError with Line 0.
func (l *Log) VerifyStore(ctx context.Context, pub crypto.PublicKey) (Report, error) {
	if pub == nil {
		if l.pub == nil {
			return Report{}, ErrNoSigner
		}
		pub = l.pub
	}
	c, err := newChain(pub)
	if err != nil {
		return Report{}, err
	}
	head, err := l.storedHead(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("audit: verify store: %w", err)
	}
	c.begin(Header{First: 1, Last: head})
	err = l.walk(ctx, 1, head, func(kind byte, key uint64, raw []byte) error {
		bad := func(format string, args ...any) error {
			return &VerifyError{Seq: key, Err: ErrMalformed, Detail: fmt.Sprintf(format, args...)}
		}
		if kind == 'c' {
			var cp Checkpoint
			if err := json.Unmarshal(raw, &cp); err != nil {
				return bad("checkpoint: %v", err)
			}
			return c.checkpoint(&cp, 0)
		}
		var e Entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return bad("%v", err)
		}
		if err := checkStored(&e); err != nil {
			return bad("%v", err)
		}
		if e.Seq != key {
			return &VerifyError{Seq: key, Err: ErrEdited, Detail: fmt.Sprintf("the record stored as entry %d says it is entry %d", key, e.Seq)}
		}
		return c.entry(&e, 0)
	})
	if err == nil {
		err = c.end(0)
	}
	if err == nil {
		err = l.orphanCheckpoints(ctx, head)
	}
	var ve *VerifyError
	if err != nil && !errors.As(err, &ve) {
		err = fmt.Errorf("audit: verify store: %w", err)
	}
	if err != nil {
		return Report{}, err
	}
	return c.rep, nil
}

// orphanCheckpoints fails when a checkpoint is stored for an entry that is
// not: entries it covered were removed from the end of the log (walk
// visits only checkpoints of existing entries).
func (l *Log) orphanCheckpoints(ctx context.Context, head uint64) error {
	return l.db.View(ctx, func(tx kv.Tx) error {
		entries := tx.Bucket(bucketEntries)
		return tx.Bucket(bucketCheckpoints).ForEach(func(k, _ []byte) error {
			if len(k) != 8 {
				return &VerifyError{Err: ErrMalformed, Detail: fmt.Sprintf("checkpoint key %x is not a sequence number", k)}
			}
			if seq := binary.BigEndian.Uint64(k); entries.Get(k) == nil {
				if seq > head {
					return &VerifyError{Seq: head + 1, Err: ErrMissing, Detail: fmt.Sprintf("a checkpoint covers entry %d, the log ends at entry %d: entries were removed from its end", seq, head)}
				}
				return &VerifyError{Seq: seq, Err: ErrMissing, Detail: "a checkpoint covers it"}
			}
			return nil
		})
	})
}

// ParsePublicKey returns the ECDSA P-256 public key in PEM data: a
// CERTIFICATE (such as the fleet CA's ca.crt) or a PUBLIC KEY block. It is
// how `sigil audit verify` gets the key it passes to Verify.
func ParsePublicKey(data []byte) (*ecdsa.PublicKey, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("audit: no CERTIFICATE or PUBLIC KEY in PEM data")
		}
		var pub any
		var err error
		switch block.Type {
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit: parse %s: %w", strings.ToLower(block.Type), err)
		}
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok || k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("audit: %s holds a %T key, want ECDSA P-256", strings.ToLower(block.Type), pub)
		}
		return k, nil
	}
}
