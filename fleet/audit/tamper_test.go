package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// tamperFixture is a log of 10 entries with checkpoints after entries 4
// and 8, exported. Its lines (1-based):
//
//	1 header, 2-5 entries 1-4, 6 checkpoint 4, 7-10 entries 5-8,
//	11 checkpoint 8, 12-13 entries 9-10
type tamperFixture struct {
	key   *ecdsa.PrivateKey
	log   *Log
	path  string   // the log's file
	lines []string // without newlines; lines[0] is line 1
}

func newTamperFixture(t *testing.T) *tamperFixture {
	t.Helper()
	key := newKey(t)
	clk := newClock()
	path := filepath.Join(t.TempDir(), File)
	l := openLog(t, path, key, clk.Now)
	for i := range 10 {
		record(t, l, sample(i))
		clk.Advance(time.Minute)
		if i == 3 || i == 7 {
			if _, err := l.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	lines := strings.Split(strings.TrimSuffix(string(exportAll(t, l)), "\n"), "\n")
	if len(lines) != 13 || !strings.HasPrefix(lines[5], `{"checkpoint":{"seq":4,`) || !strings.HasPrefix(lines[10], `{"checkpoint":{"seq":8,`) {
		t.Fatalf("unexpected fixture layout:\n%s", strings.Join(lines, "\n"))
	}
	return &tamperFixture{key: key, log: l, path: path, lines: lines}
}

func join(lines []string) []byte { return []byte(strings.Join(lines, "\n") + "\n") }

// edit replaces old with new in line n (1-based), which must contain it.
func edit(t *testing.T, lines []string, n int, old, new string) []string {
	t.Helper()
	if !strings.Contains(lines[n-1], old) {
		t.Fatalf("line %d lacks %q: %s", n, old, lines[n-1])
	}
	out := slices.Clone(lines)
	out[n-1] = strings.Replace(out[n-1], old, new, 1)
	return out
}

// rewrite changes entry line n with change and recomputes the hashes of
// that entry and of the entries on lines n+1..through, as a forger who can
// write the file would.
func rewrite(t *testing.T, lines []string, n, through int, change func(*Entry)) []string {
	t.Helper()
	out := slices.Clone(lines)
	var prev *Hash
	for i := n; i <= through; i++ {
		l, err := parseLine([]byte(out[i-1]))
		if err != nil || l.Entry == nil {
			t.Fatalf("line %d is not an entry: %v", i, err)
		}
		e := l.Entry
		if i == n {
			change(e)
		} else {
			e.Prev = *prev
		}
		e.Hash = e.ComputeHash()
		prev = &e.Hash
		b, err := json.Marshal(line{Entry: e})
		if err != nil {
			t.Fatal(err)
		}
		out[i-1] = string(b)
	}
	return out
}

// resign replaces the checkpoint on line n with one for the entry on line
// n-1, signed with key.
func resign(t *testing.T, lines []string, n int, key *ecdsa.PrivateKey) []string {
	t.Helper()
	el, err := parseLine([]byte(lines[n-2]))
	if err != nil || el.Entry == nil {
		t.Fatalf("line %d is not an entry: %v", n-1, err)
	}
	cp := Checkpoint{Seq: el.Entry.Seq, Head: el.Entry.Hash, Time: el.Entry.Time}
	cp.KeyID, _ = KeyID(&key.PublicKey)
	digest := sha256.Sum256(cp.Canonical())
	if cp.Signature, err = key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(line{Checkpoint: &cp})
	if err != nil {
		t.Fatal(err)
	}
	out := slices.Clone(lines)
	out[n-1] = string(b)
	return out
}

func TestVerifyDetectsTampering(t *testing.T) {
	f := newTamperFixture(t)
	if _, err := Verify(bytes.NewReader(join(f.lines)), &f.key.PublicKey); err != nil {
		t.Fatalf("untouched export: %v", err)
	}
	other := newKey(t)
	cases := []struct {
		name   string
		export func(*testing.T) []byte
		key    *ecdsa.PublicKey
		want   error
		seq    uint64
		line   int
		detail string // a part of the message
	}{
		{
			name:   "edit target",
			export: func(t *testing.T) []byte { return join(edit(t, f.lines, 8, `"target":"dev-5"`, `"target":"dev-x"`)) },
			want:   ErrEdited, seq: 6, line: 8, detail: "hash does not match",
		},
		{
			name:   "edit detail",
			export: func(t *testing.T) []byte { return join(edit(t, f.lines, 2, `"serial":"0"`, `"serial":"1"`)) },
			want:   ErrEdited, seq: 1, line: 2,
		},
		{
			name:   "edit outcome",
			export: func(t *testing.T) []byte { return join(edit(t, f.lines, 4, `"outcome":"failed"`, `"outcome":"ok"`)) },
			want:   ErrEdited, seq: 3, line: 4,
		},
		{
			name:   "edit time",
			export: func(t *testing.T) []byte { return join(edit(t, f.lines, 10, `T10:07:00Z`, `T10:07:01Z`)) },
			want:   ErrEdited, seq: 8, line: 10,
		},
		{
			name:   "delete entry",
			export: func(t *testing.T) []byte { return join(slices.Delete(slices.Clone(f.lines), 6, 7)) }, // entry 5
			want:   ErrMissing, seq: 5, line: 7, detail: "entry 6 follows entry 4",
		},
		{
			name:   "delete first entry",
			export: func(t *testing.T) []byte { return join(slices.Delete(slices.Clone(f.lines), 1, 2)) },
			want:   ErrMissing, seq: 1, line: 2,
		},
		{
			name: "reorder two entries",
			export: func(t *testing.T) []byte {
				l := slices.Clone(f.lines)
				l[7], l[8] = l[8], l[7] // entries 6 and 7
				return join(l)
			},
			want: ErrReordered, seq: 6, line: 9, detail: "later, at line 9, than line 8",
		},
		{
			name: "move entry far",
			export: func(t *testing.T) []byte {
				l := slices.Clone(f.lines)
				e2 := l[2]
				l = slices.Delete(l, 2, 3)
				return join(slices.Insert(l, 10, e2)) // entry 2 after entry 8
			},
			want: ErrReordered, seq: 2, line: 11,
		},
		{
			name:   "duplicate entry",
			export: func(t *testing.T) []byte { return join(slices.Insert(slices.Clone(f.lines), 3, f.lines[2])) },
			want:   ErrReordered, seq: 2, line: 4, detail: "twice",
		},
		{
			name: "edit and recompute one hash",
			export: func(t *testing.T) []byte {
				return join(rewrite(t, f.lines, 8, 8, func(e *Entry) { e.Target = "dev-x" }))
			},
			want: ErrEdited, seq: 6, line: 8, detail: "entry 7 (line 9) does not link to it",
		},
		{
			name: "edit and recompute hashes up to a checkpoint",
			export: func(t *testing.T) []byte {
				return join(rewrite(t, f.lines, 8, 10, func(e *Entry) { e.Outcome, e.Reason = OK, "" }))
			},
			want: ErrEdited, seq: 8, line: 11, detail: "from 5 to 8",
		},
		{
			name: "forge checkpoint head",
			export: func(t *testing.T) []byte {
				e3, err := parseLine([]byte(f.lines[3]))
				if err != nil {
					t.Fatal(err)
				}
				cp, err := parseLine([]byte(f.lines[5]))
				if err != nil {
					t.Fatal(err)
				}
				return join(edit(t, f.lines, 6, cp.Checkpoint.Head.String(), e3.Entry.Hash.String()))
			},
			want: ErrBadSignature, seq: 4, line: 6,
		},
		{
			name:   "checkpoint head not hex",
			export: func(t *testing.T) []byte { return join(edit(t, f.lines, 6, `"seq":4,"head":"`, `"seq":4,"head":"Z`)) },
			want:   ErrMalformed, seq: 0, line: 6,
		},
		{
			name: "forge checkpoint time",
			export: func(t *testing.T) []byte {
				l, err := parseLine([]byte(f.lines[5]))
				if err != nil {
					t.Fatal(err)
				}
				old := `"time":"` + l.Checkpoint.Time.Format(time.RFC3339Nano) + `"`
				return join(edit(t, f.lines, 6, old, `"time":"2030-01-01T00:00:00Z"`))
			},
			want: ErrBadSignature, seq: 4, line: 6, detail: "does not verify",
		},
		{
			name: "rewrite whole log and re-sign with another key",
			export: func(t *testing.T) []byte {
				l := rewrite(t, f.lines, 3, 5, func(e *Entry) { e.Target = "dev-x" })
				l = resign(t, l, 6, other)
				l = rewrite(t, l, 7, 10, func(*Entry) {})
				l = resign(t, l, 11, other)
				return join(rewrite(t, l, 12, 13, func(*Entry) {}))
			},
			want: ErrBadSignature, seq: 4, line: 6, detail: "names key",
		},
		{
			name:   "swap verification key",
			export: func(t *testing.T) []byte { return join(f.lines) },
			key:    &other.PublicKey,
			want:   ErrBadSignature, seq: 4, line: 6,
		},
		{
			name:   "delete entries before a kept checkpoint",
			export: func(t *testing.T) []byte { return join(slices.Delete(slices.Clone(f.lines), 8, 10)) }, // entries 7, 8
			want:   ErrMissing, seq: 7, line: 9, detail: "entries 7 to 8 are not there",
		},
		{
			name: "move checkpoint",
			export: func(t *testing.T) []byte {
				l := slices.Clone(f.lines)
				l[5], l[6] = l[6], l[5] // checkpoint 4 after entry 5
				return join(l)
			},
			want: ErrReordered, seq: 4, line: 7,
		},
		{
			name:   "truncate tail, header kept",
			export: func(t *testing.T) []byte { return join(f.lines[:11]) },
			want:   ErrTruncated, seq: 9, line: 12,
		},
		{
			name:   "cut mid-line",
			export: func(t *testing.T) []byte { b := join(f.lines); return b[:len(b)-20] },
			want:   ErrTruncated, seq: 10, line: 13,
		},
		{
			name:   "reformatted line",
			export: func(t *testing.T) []byte { return join(edit(t, f.lines, 5, `"seq":4,`, `"seq": 4,`)) },
			want:   ErrMalformed, seq: 0, line: 5,
		},
		{
			name:   "duplicate key",
			export: func(t *testing.T) []byte { return join(edit(t, f.lines, 5, `"seq":4,`, `"seq":4,"seq":4,`)) },
			want:   ErrMalformed, seq: 0, line: 5,
		},
		{
			name:   "no header",
			export: func(t *testing.T) []byte { return join(f.lines[1:]) },
			want:   ErrMalformed, seq: 0, line: 1,
		},
		{
			name:   "empty",
			export: func(t *testing.T) []byte { return nil },
			want:   ErrTruncated, seq: 0, line: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.key
			if key == nil {
				key = &f.key.PublicKey
			}
			rep, err := Verify(bytes.NewReader(tc.export(t)), key)
			if err == nil {
				t.Fatalf("tampered export verified: %+v", rep)
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if ve.Seq != tc.seq || ve.Line != tc.line {
				t.Fatalf("error names entry %d at line %d, want entry %d at line %d: %v", ve.Seq, ve.Line, tc.seq, tc.line, err)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("error %q lacks %q", err, tc.detail)
			}
			t.Log(err)
		})
	}
}

// TestVerifyCannotSeeUnsignedTail pins what the package doc says cannot be
// detected: changes to the entries after the last checkpoint by someone who
// can write the file. Verify passes, and Report.Unsigned tells the reader
// how much is at stake; comparing with an independently known head reveals
// the change.
func TestVerifyCannotSeeUnsignedTail(t *testing.T) {
	f := newTamperFixture(t)
	_, realHead := f.log.Head()

	// Drop entries 9 and 10 and fix the unsigned header to match.
	cut := edit(t, f.lines[:11], 1, `"last":10`, `"last":8`)
	rep, err := Verify(bytes.NewReader(join(cut)), &f.key.PublicKey)
	if err != nil {
		t.Fatalf("truncation after the last checkpoint: %v", err)
	}
	if rep.Last != 8 || rep.Unsigned != 0 || rep.Checkpoint.Seq != 8 {
		t.Fatalf("report %+v", rep)
	}
	if seq, _ := f.log.Head(); rep.Last == seq {
		t.Fatal("a truncated export looks complete against the live head")
	}

	// Rewrite entry 9 with the hashes recomputed.
	forged := rewrite(t, f.lines, 12, 13, func(e *Entry) { e.Actor = User("mallory") })
	rep, err = Verify(bytes.NewReader(join(forged)), &f.key.PublicKey)
	if err != nil {
		t.Fatalf("rewrite after the last checkpoint: %v", err)
	}
	if rep.Unsigned != 2 || rep.Head == realHead {
		t.Fatalf("report %+v: want 2 unsigned entries and a head that differs from the real one", rep)
	}
}

// TestVerifyStoreDetectsTampering edits the bbolt file directly.
func TestVerifyStoreDetectsTampering(t *testing.T) {
	cases := []struct {
		name   string
		change func(tx *bolt.Tx) error
		want   error
		seq    uint64
	}{
		{"edit entry", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEntries)
			v := bytes.Replace(b.Get(seqKey(6)), []byte(`"dev-5"`), []byte(`"dev-x"`), 1)
			return b.Put(seqKey(6), v)
		}, ErrEdited, 6},
		{"delete entry", func(tx *bolt.Tx) error { return tx.Bucket(bucketEntries).Delete(seqKey(3)) }, ErrMissing, 3},
		{"swap entries", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEntries)
			v2, v3 := bytes.Clone(b.Get(seqKey(2))), bytes.Clone(b.Get(seqKey(3)))
			if err := b.Put(seqKey(2), v3); err != nil {
				return err
			}
			return b.Put(seqKey(3), v2)
		}, ErrEdited, 2},
		{"forge checkpoint", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketCheckpoints)
			v := bytes.Replace(b.Get(seqKey(8)), []byte(`"seq":8`), []byte(`"seq":7`), 1)
			return b.Put(seqKey(8), v)
		}, ErrBadSignature, 7},
		{"delete tail", func(tx *bolt.Tx) error { return tx.Bucket(bucketEntries).Delete(seqKey(10)) }, ErrTruncated, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newTamperFixture(t)
			path := f.path
			if err := f.log.Close(); err != nil {
				t.Fatal(err)
			}
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(tc.change); err != nil {
				t.Fatal(err)
			}
			db.Close()
			l := openLog(t, path, f.key, nil)
			if tc.name == "delete tail" {
				// The reopened log's head is entry 9: VerifyStore checks up
				// to it and passes; the tail is gone without a trace, as
				// the package doc says, unless a checkpoint covered it.
				rep, err := l.VerifyStore(t.Context(), nil)
				if err != nil || rep.Last != 9 {
					t.Fatalf("report %+v, %v", rep, err)
				}
				return
			}
			_, err = l.VerifyStore(t.Context(), nil)
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, tc.want) || ve.Seq != tc.seq || ve.Line != 0 {
				t.Fatalf("VerifyStore: %v, want %v at entry %d", err, tc.want, tc.seq)
			}
			t.Log(err)
		})
	}
}

// TestSignedTailRemoved removes entries covered by a checkpoint from the
// end of the file: the live log reports it, and appending new entries in
// their place does not hide it.
func TestSignedTailRemoved(t *testing.T) {
	f := newTamperFixture(t)
	path := f.path
	if err := f.log.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for seq := uint64(7); seq <= 10; seq++ {
			if err := tx.Bucket(bucketEntries).Delete(seqKey(seq)); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	l := openLog(t, path, f.key, nil)
	_, err = l.VerifyStore(t.Context(), nil)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Err != ErrMissing || ve.Seq != 7 {
		t.Fatalf("VerifyStore after removing signed entries: %v, want entry 7 missing", err)
	}
	// New entries 7 and 8 take the removed ones' places.
	record(t, l, sample(100))
	record(t, l, sample(101))
	if _, err := l.Checkpoint(context.Background()); err == nil {
		t.Fatal("checkpoint over an existing one for entry 8")
	}
	_, err = Verify(bytes.NewReader(exportAll(t, l)), &f.key.PublicKey)
	if !errors.As(err, &ve) || ve.Err != ErrEdited || ve.Seq != 8 {
		t.Fatalf("export after refilling: %v, want entry 8 edited (checkpoint mismatch)", err)
	}
	t.Log(err)
}
