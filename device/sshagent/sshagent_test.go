package sshagent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	xagent "golang.org/x/crypto/ssh/agent"

	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestTPMKey: the agent serves a TPM-resident key to an independent
// ssh-agent client (golang.org/x/crypto/ssh/agent, used only by this
// test): it lists exactly that key, and its signatures verify with the SSH
// public key; requests for other keys or operations are refused.
func TestTPMKey(t *testing.T) {
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
	srv, err := New(signer, "sigil-tpm-host-key", nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	go srv.ServeConn(context.Background(), b)
	defer a.Close()
	client := xagent.NewClient(a)

	keys, err := client.List()
	if err != nil || len(keys) != 1 || keys[0].Type() != ssh.KeyAlgoECDSA256 || keys[0].Comment != "sigil-tpm-host-key" {
		t.Fatalf("list: %v %v", keys, err)
	}
	want, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(keys[0].Marshal(), want.Marshal()) {
		t.Fatal("the agent lists another key than the TPM's")
	}
	if line := srv.AuthorizedKey(); line != strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(want)), "\n")+" sigil-tpm-host-key\n" {
		t.Fatalf("AuthorizedKey = %q", line)
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

// TestNewRefusesOtherKeys: only ECDSA P-256 keys are served.
func TestNewRefusesOtherKeys(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := New(k, "x", nil); err == nil {
		t.Fatal("a P-384 key was accepted")
	}
}

// TestBadFrames: malformed requests get a failure or close the
// connection; they never crash the daemon.
func TestBadFrames(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv, err := New(k, "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range [][]byte{{agentSignRequest}, {agentSignRequest, 0, 0, 0, 9}, {agentSignRequest, 0xff, 0xff, 0xff, 0xff}, {99}} {
		if got := srv.handle(msg); !bytes.Equal(got, []byte{agentFailure}) {
			t.Errorf("handle(%x) = %x, want failure", msg, got)
		}
	}
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { srv.ServeConn(context.Background(), b); close(done) }()
	a.Write(binary.BigEndian.AppendUint32(nil, MaxMessage+1))
	<-done // an oversized frame ends the connection
	a.Close()
}

// TestListenServe: the socket is mode 0600 and replaces a stale one; Serve
// answers on it and returns, with its connections ended, when its
// context ends.
func TestListenServe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "ssh-agent.sock")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket %v, %v", fi.Mode(), err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv, _ := New(k, "k", nil)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys, err := xagent.NewClient(c).List()
	if err != nil || len(keys) != 1 {
		t.Fatalf("list: %v %v", keys, err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if _, err := xagent.NewClient(c).List(); err == nil {
		t.Fatal("a connection outlived Serve")
	}
}

func FuzzHandle(f *testing.F) {
	f.Add([]byte{agentRequestIDs})
	f.Add([]byte{agentSignRequest, 0, 0, 0, 1, 1, 0, 0, 0, 1, 2, 0, 0, 0, 0})
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv, err := New(k, "k", nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append(appendString(appendString([]byte{agentSignRequest}, srv.blob), []byte("data")), 0, 0, 0, 0))
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
