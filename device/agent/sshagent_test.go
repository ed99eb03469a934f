package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"log/slog"
	"net"
	"testing"

	"golang.org/x/crypto/ssh"
	sshagent "golang.org/x/crypto/ssh/agent"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestSSHAgentTPMKey: the agent serves a TPM-resident key to an
// independent ssh-agent client (golang.org/x/crypto/ssh/agent, used only
// by this test): it lists exactly that key, and its signatures verify with
// the SSH public key; requests for other keys or operations are refused.
func TestSSHAgentTPMKey(t *testing.T) {
	inst := swtpmtest.New(t, nil)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	key, err := tp.CreateTransportKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tp.PublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tp.Signer(key)
	if err != nil {
		t.Fatal(err)
	}
	srv := &sshAgentServer{blob: sshPublicBlob(pub.(*ecdsa.PublicKey)), signer: signer, log: slog.New(slog.DiscardHandler)}
	a, b := net.Pipe()
	go srv.serve(context.Background(), b)
	defer a.Close()
	client := sshagent.NewClient(a)

	keys, err := client.List()
	if err != nil || len(keys) != 1 || keys[0].Type() != ssh.KeyAlgoECDSA256 {
		t.Fatalf("list: %v %v", keys, err)
	}
	want, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(keys[0].Marshal(), want.Marshal()) {
		t.Fatal("the agent lists another key than the TPM's")
	}
	data := []byte("session identifier and host key exchange hash")
	sig, err := client.Sign(keys[0], data)
	if err != nil {
		t.Fatal(err)
	}
	if err := want.Verify(data, sig); err != nil {
		t.Fatalf("TPM signature does not verify: %v", err)
	}
	if err := want.Verify([]byte("other data"), sig); err == nil {
		t.Fatal("signature verifies over other data")
	}
	// Another key, and operations sshd never needs, are refused.
	other, _, _, _, _ := ssh.ParseAuthorizedKey([]byte("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg= other"))
	if _, err := client.Sign(other, data); err == nil {
		t.Fatal("the agent signed for a key it does not hold")
	}
	if err := client.RemoveAll(); err == nil {
		t.Fatal("the agent accepted remove-all")
	}
}

// TestSSHAgentBadFrames: malformed requests get a failure or close the
// connection; they never crash the daemon.
func TestSSHAgentBadFrames(t *testing.T) {
	srv := &sshAgentServer{blob: []byte{1}, log: slog.New(slog.DiscardHandler)}
	for _, msg := range [][]byte{{agentSignRequest}, {agentSignRequest, 0, 0, 0, 9}, {agentSignRequest, 0xff, 0xff, 0xff, 0xff}, {99}} {
		if got := srv.handle(msg); !bytes.Equal(got, []byte{agentFailure}) {
			t.Errorf("handle(%x) = %x, want failure", msg, got)
		}
	}
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { srv.serve(context.Background(), b); close(done) }()
	a.Write(binary.BigEndian.AppendUint32(nil, agentMaxMessage+1))
	<-done // an oversized frame ends the connection
	a.Close()
}

func FuzzSSHAgentHandle(f *testing.F) {
	f.Add([]byte{agentRequestIDs})
	f.Add([]byte{agentSignRequest, 0, 0, 0, 1, 1, 0, 0, 0, 1, 2, 0, 0, 0, 0})
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := &sshAgentServer{blob: []byte{1}, signer: k, log: slog.New(slog.DiscardHandler)}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) == 0 {
			return
		}
		out := srv.handle(msg)
		if len(out) == 0 || (out[0] != agentFailure && out[0] != agentIdentitiesAnswer && out[0] != agentSignResponse) {
			t.Fatalf("answer %x", out)
		}
	})
}
