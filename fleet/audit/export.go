package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/sigil-iot/sigil/fleet/storage/kv"
)

// ExportFormat names the export format in its header line.
const ExportFormat = "sigil-audit-export-v1"

// Header is the first line of an export. It is not signed: it lets Verify
// tell an export cut short by accident from a complete one, not one cut
// short on purpose (package doc, "What verification detects").
type Header struct {
	Format string `json:"format"` // ExportFormat
	First  uint64 `json:"first"`  // first entry in the export
	Last   uint64 `json:"last"`   // last entry in the export; First-1 when it holds none
}

// line is one line of an export: exactly one field is set.
type line struct {
	Header     *Header     `json:"header,omitempty"`
	Entry      *Entry      `json:"entry,omitempty"`
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
}

// exportChunk is how many entries one read transaction of Export and
// VerifyStore covers, so that a long export does not hold a read
// transaction (and with it bbolt's remapping of a growing file) open.
const exportChunk = 1000

// Export writes entries from..to (inclusive) as JSON lines: a Header line,
// then each entry, each followed by the checkpoint covering it when there
// is one. from 0 means 1; to 0 means the last entry, as is a to past it.
// Entries appended while it runs are not included. The output is what
// Verify reads; to have every exported entry covered by a signature, call
// Checkpoint first.
func (l *Log) Export(ctx context.Context, w io.Writer, from, to uint64) error {
	head, err := l.storedHead(ctx)
	if err != nil {
		return fmt.Errorf("audit: export: %w", err)
	}
	from = max(from, 1)
	if to == 0 || to > head {
		to = head
	}
	last := max(to, from-1)
	bw := bufio.NewWriterSize(w, 64<<10)
	hdr, err := json.Marshal(line{Header: &Header{Format: ExportFormat, First: from, Last: last}})
	if err != nil {
		return fmt.Errorf("audit: export: %w", err)
	}
	bw.Write(hdr)
	bw.WriteByte('\n')
	err = l.walk(ctx, from, to, func(kind byte, _ uint64, raw []byte) error {
		if kind == 'e' {
			bw.WriteString(`{"entry":`)
		} else {
			bw.WriteString(`{"checkpoint":`)
		}
		bw.Write(raw)
		_, err := bw.WriteString("}\n")
		return err
	})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return fmt.Errorf("audit: export: %w", err)
	}
	return nil
}

// walk calls fn, in order, for the stored JSON of each entry from..to
// (kind 'e') and of the checkpoint covering it, if any, right after it
// (kind 'c'), with the key each is stored under. raw is valid only during
// the call.
func (l *Log) walk(ctx context.Context, from, to uint64, fn func(kind byte, key uint64, raw []byte) error) error {
	for next := from; next <= to && next != 0; {
		err := l.db.View(ctx, func(tx kv.Tx) error {
			cps := tx.Bucket(bucketCheckpoints)
			c := tx.Bucket(bucketEntries).Cursor()
			n := 0
			for k, v := c.Seek(seqKey(next)); k != nil && n < exportChunk; k, v = c.Next() {
				if len(k) != 8 {
					return fmt.Errorf("entry key %x is not a sequence number", k)
				}
				seq := binary.BigEndian.Uint64(k)
				if seq > to {
					next = 0
					return nil
				}
				if err := fn('e', seq, v); err != nil {
					return err
				}
				if cp := cps.Get(k); cp != nil {
					if err := fn('c', seq, cp); err != nil {
						return err
					}
				}
				n++
				next = seq + 1
			}
			if n < exportChunk {
				next = 0 // the bucket ended
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// maxLine bounds one line of an export. Entries are limited far below it
// (MaxReason, MaxDetails, ...), even with every character escaped.
const maxLine = 1 << 20

// parseLine parses one line of an export (without its newline). It accepts
// only the exact bytes Export writes for the record it decodes: no
// unknown, duplicate or reordered keys, no added white space, so that
// every tool that reads the line sees the record that was verified.
func parseLine(b []byte) (line, error) {
	var l line
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return line{}, fmt.Errorf("not a JSON record: %w", err)
	}
	n := 0
	for _, set := range []bool{l.Header != nil, l.Entry != nil, l.Checkpoint != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return line{}, fmt.Errorf("holds %d records, want one header, entry or checkpoint", n)
	}
	out, err := json.Marshal(&l)
	if err != nil {
		return line{}, err
	}
	if !bytes.Equal(out, b) {
		return line{}, errors.New("not in the form Export writes (reformatted, extra, duplicate or reordered keys, or different escaping)")
	}
	switch {
	case l.Header != nil:
		if l.Header.Format != ExportFormat {
			return line{}, fmt.Errorf("format %q, want %q", clip(l.Header.Format, 64), ExportFormat)
		}
		if l.Header.First == 0 || l.Header.Last < l.Header.First-1 {
			return line{}, fmt.Errorf("header range %d..%d is not a range of entries", l.Header.First, l.Header.Last)
		}
	case l.Entry != nil:
		if err := checkStored(l.Entry); err != nil {
			return line{}, err
		}
	case l.Checkpoint != nil:
		cp := l.Checkpoint
		if cp.Seq == 0 || !validTime(cp.Time) || len(cp.Signature) == 0 || len(cp.Signature) > MaxSignature || len(cp.KeyID) > 64 {
			return line{}, errors.New("checkpoint lacks a sequence number, time or signature, or has one out of range")
		}
	}
	return l, nil
}

// checkStored checks the fields of an entry read back from an export or
// the store.
func checkStored(e *Entry) error {
	if e.Seq == 0 {
		return errors.New("entry has no sequence number")
	}
	if !validTime(e.Time) {
		return fmt.Errorf("entry %d: time %v outside 1970-2261", e.Seq, e.Time)
	}
	if err := e.validate(); err != nil {
		return fmt.Errorf("entry %d: %w", e.Seq, err)
	}
	return nil
}
