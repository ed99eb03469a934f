package audit

import (
	"bytes"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sigil-iot/sigil/internal/runtest"
)

// TestRunCheckpoints runs Run on fake time: a checkpoint every interval
// when entries were appended, none when not, and one on shutdown.
func TestRunCheckpoints(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		key := newKey(t)
		l, err := Open(Config{Path: filepath.Join(t.TempDir(), File), Signer: key, CheckpointInterval: time.Minute, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		start := time.Now()
		stop := runtest.Start(t, l.Run)

		time.Sleep(time.Minute + time.Second) // an interval with an empty log
		synctest.Wait()
		if _, ok := l.LastCheckpoint(); ok {
			t.Fatal("checkpoint of an empty log")
		}
		for i := range 3 {
			record(t, l, sample(i))
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		cp, ok := l.LastCheckpoint()
		if !ok || cp.Seq != 3 || !cp.Time.Equal(start.Add(2*time.Minute).UTC()) {
			t.Fatalf("checkpoint after the second interval: %+v (ok %v)", cp, ok)
		}
		time.Sleep(3 * time.Minute) // nothing appended: no new checkpoint
		synctest.Wait()
		record(t, l, sample(3))
		record(t, l, sample(4))
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if cp, _ := l.LastCheckpoint(); cp.Seq != 5 {
			t.Fatalf("shutdown checkpoint covers entry %d, want 5", cp.Seq)
		}
		var b bytes.Buffer
		if err := l.Export(t.Context(), &b, 0, 0); err != nil {
			t.Fatal(err)
		}
		rep, err := Verify(&b, &key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Checkpoints != 2 || rep.Unsigned != 0 {
			t.Fatalf("report %+v, want 2 checkpoints and nothing unsigned", rep)
		}
	})
}
