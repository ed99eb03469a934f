package statetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/sigil-iot/sigil/device/state"
)

// EngineOpener opens the engine of one location, as Opener does the store.
type EngineOpener func(t *testing.T, readOnly bool) state.Engine

// RunEngine checks the Engine contract the store relies on; fresh returns
// an EngineOpener of a new, empty location.
func RunEngine(t *testing.T, fresh func(t *testing.T) EngineOpener) {
	tests := []struct {
		name string
		fn   func(*testing.T, EngineOpener)
	}{
		{"OrderAndNesting", engineOrder},
		{"FailedUpdateLeavesNothing", engineRollback},
		{"ReadOnly", engineReadOnly},
		{"Reopen", engineReopen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, fresh(t)) })
	}
}

func update(t *testing.T, e state.Engine, fn func(state.Tx) error) {
	t.Helper()
	if err := e.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// dump lists a bucket's keys with values, in order, from from.
func dump(t *testing.T, b state.Bucket, from []byte) string {
	t.Helper()
	var out []string
	err := b.Ascend(from, func(k, v []byte) (bool, error) {
		out = append(out, fmt.Sprintf("%s=%s", k, v))
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(out)
}

func engineOrder(t *testing.T, open EngineOpener) {
	e := open(t, false)
	defer e.Close()
	update(t, e, func(tx state.Tx) error {
		if tx.Bucket([]byte("b")) != nil {
			return errors.New("a bucket exists in a new engine")
		}
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		for _, k := range []string{"m", "c", "x", "a", "ca", "\xff", "b"} {
			if err := b.Put([]byte(k), []byte("v"+k)); err != nil {
				return err
			}
		}
		if err := b.Put([]byte("c"), []byte("again")); err != nil {
			return err
		}
		// A nested bucket sits among the keys but holds no value.
		n, err := b.CreateBucketIfNotExists([]byte("n"))
		if err != nil {
			return err
		}
		if err := n.Put([]byte("inner"), []byte("1")); err != nil {
			return err
		}
		again, err := b.CreateBucketIfNotExists([]byte("n"))
		if err != nil || again.Get([]byte("inner")) == nil {
			return fmt.Errorf("creating an existing bucket again: %v", err)
		}
		return b.Delete([]byte("x"))
	})
	err := e.View(func(tx state.Tx) error {
		b := tx.Bucket([]byte("b"))
		if got := dump(t, b, nil); got != "[a=va b=vb c=again ca=vca m=vm \xff=v\xff]" {
			t.Errorf("ascend from the start: %q", got)
		}
		if got := dump(t, b, []byte("c")); got != "[c=again ca=vca m=vm \xff=v\xff]" {
			t.Errorf("ascend from c: %q", got)
		}
		if got := dump(t, b, []byte("d")); got != "[m=vm \xff=v\xff]" {
			t.Errorf("ascend from d (absent): %q", got)
		}
		var seen int
		if err := b.Ascend(nil, func(k, v []byte) (bool, error) { seen++; return seen < 2, nil }); err != nil || seen != 2 {
			t.Errorf("ascend stopped after %d keys, %v", seen, err)
		}
		stop := errors.New("stop")
		if err := b.Ascend(nil, func(k, v []byte) (bool, error) { return true, stop }); !errors.Is(err, stop) {
			t.Errorf("ascend returned %v, want fn's error", err)
		}
		if k, v := b.First(); string(k) != "a" || string(v) != "va" {
			t.Errorf("first: %q=%q", k, v)
		}
		if b.Get([]byte("x")) != nil || b.Get([]byte("n")) != nil || b.Get([]byte("zz")) != nil {
			t.Error("a deleted key, a bucket or an absent key has a value")
		}
		if n := b.Bucket([]byte("n")); n == nil || string(n.Get([]byte("inner"))) != "1" {
			t.Error("nested bucket lost")
		}
		if b.Bucket([]byte("a")) != nil || b.Bucket([]byte("absent")) != nil {
			t.Error("a key or an absent name is a bucket")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	update(t, e, func(tx state.Tx) error {
		b := tx.Bucket([]byte("b"))
		if err := b.Delete([]byte("never")); err != nil {
			return fmt.Errorf("deleting an absent key: %w", err)
		}
		for k, _ := b.First(); k != nil; k, _ = b.First() {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		if k, v := b.First(); k != nil || v != nil {
			return fmt.Errorf("first of a bucket holding only a bucket: %q", k)
		}
		return nil
	})
}

func engineRollback(t *testing.T, open EngineOpener) {
	e := open(t, false)
	defer e.Close()
	update(t, e, func(tx state.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		return errors.Join(b.Put([]byte("keep"), []byte("1")), b.Put([]byte("gone"), []byte("1")))
	})
	failed := errors.New("changed my mind")
	err := e.Update(func(tx state.Tx) error {
		b := tx.Bucket([]byte("b"))
		if err := b.Put([]byte("keep"), []byte("2")); err != nil {
			return err
		}
		if err := b.Put([]byte("new"), []byte("1")); err != nil {
			return err
		}
		if err := b.Delete([]byte("gone")); err != nil {
			return err
		}
		n, err := b.CreateBucketIfNotExists([]byte("nested"))
		if err != nil {
			return err
		}
		if err := n.Put([]byte("k"), []byte("v")); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists([]byte("other")); err != nil {
			return err
		}
		if got := string(b.Get([]byte("keep"))); got != "2" {
			return fmt.Errorf("a transaction does not see its own write: %q", got)
		}
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("failed update returned %v, want fn's error", err)
	}
	err = e.View(func(tx state.Tx) error {
		b := tx.Bucket([]byte("b"))
		if got := dump(t, b, nil); got != "[gone=1 keep=1]" {
			t.Errorf("after a failed update: %s", got)
		}
		if b.Bucket([]byte("nested")) != nil || tx.Bucket([]byte("other")) != nil {
			t.Error("buckets created by a failed update remain")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func engineReadOnly(t *testing.T, open EngineOpener) {
	e := open(t, false)
	update(t, e, func(tx state.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	})
	err := e.View(func(tx state.Tx) error {
		if _, err := tx.CreateBucketIfNotExists([]byte("c")); err == nil {
			t.Error("a view created a bucket")
		}
		b := tx.Bucket([]byte("b"))
		if err := b.Put([]byte("k"), []byte("w")); err == nil {
			t.Error("a view wrote")
		}
		if err := b.Delete([]byte("k")); err == nil {
			t.Error("a view deleted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	ro := open(t, true)
	defer ro.Close()
	if err := ro.Update(func(state.Tx) error { return nil }); err == nil {
		t.Error("a read-only engine ran an update")
	}
	err = ro.View(func(tx state.Tx) error {
		if got := tx.Bucket([]byte("b")).Get([]byte("k")); !bytes.Equal(got, []byte("v")) {
			t.Errorf("read-only engine reads %q", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func engineReopen(t *testing.T, open EngineOpener) {
	e := open(t, false)
	update(t, e, func(tx state.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		n, err := b.CreateBucketIfNotExists([]byte("n"))
		if err != nil {
			return err
		}
		return errors.Join(b.Put([]byte("k"), []byte("v")), n.Put([]byte("i"), []byte("j")))
	})
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.View(func(state.Tx) error { return nil }); err == nil {
		t.Error("a closed engine ran a view")
	}
	e = open(t, false)
	defer e.Close()
	err := e.View(func(tx state.Tx) error {
		b := tx.Bucket([]byte("b"))
		if b == nil || string(b.Get([]byte("k"))) != "v" || string(b.Bucket([]byte("n")).Get([]byte("i"))) != "j" {
			t.Error("reopened engine lost what was committed")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
