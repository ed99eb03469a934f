package audit_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sigil-iot/sigil/fleet/audit"
)

// Record entries, sign a checkpoint, export, verify offline with the
// public key, and see a tampered export fail.
func Example() {
	dir, _ := os.MkdirTemp("", "audit-example")
	defer os.RemoveAll(dir)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // the fleet CA's key, in sigil serve
	log, err := audit.Open(audit.Config{Path: filepath.Join(dir, audit.File), Signer: key})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer log.Close()

	ctx := context.Background()
	var rec audit.Recorder = log // what other packages accept
	rec.Record(ctx, audit.New(audit.User("alice"), "device.revoke", "dev-7").Because("stolen").Request("req-1"))
	rec.Record(ctx, audit.New(audit.Token("ci"), "firmware.release", "fw-2.1").Deny("needs a second approver"))
	rec.Record(ctx, audit.New(audit.System("attest"), "device.quarantine", "dev-9").With("pcr", "7"))
	log.Checkpoint(ctx) // Run does this every interval and on shutdown

	var export bytes.Buffer
	log.Export(ctx, &export, 0, 0)
	tampered := bytes.Replace(export.Bytes(), []byte(`"id":"alice"`), []byte(`"id":"bob"`), 1)

	rep, err := audit.Verify(&export, &key.PublicKey)
	fmt.Printf("entries %d to %d, %d checkpoint, %d unsigned, err %v\n", rep.First, rep.Last, rep.Checkpoints, rep.Unsigned, err)
	_, err = audit.Verify(bytes.NewReader(tampered), &key.PublicKey)
	fmt.Println(err)
	// Output:
	// entries 1 to 3, 1 checkpoint, 0 unsigned, err <nil>
	// audit: verify: line 2, entry 1: entry edited: its hash does not match its contents
}
