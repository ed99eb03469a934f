package fetch_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-iot/sigil/device/fetch"
	"github.com/sigil-iot/sigil/device/tpm"
	"github.com/sigil-iot/sigil/internal/pkitest"
	"github.com/sigil-iot/sigil/sim/swtpm/swtpmtest"
)

// TestMutualTLS downloads from a server that requires a client
// certificate, with the device's identity as it is in sigild: a transport
// key born in a (software) TPM signs every handshake. A client without the
// certificate is refused before any request reaches the handler.
func TestMutualTLS(t *testing.T) {
	inst := swtpmtest.New(t, nil)
	tp, err := tpm.Open(inst.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	blob, err := tp.CreateTransportKey()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tp.Signer(blob)
	if err != nil {
		t.Fatal(err)
	}

	ca := pkitest.NewCA(t, "fleet CA")
	devDER := ca.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "dev-1"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, signer.Public())

	img := image(150_000)
	var (
		mu      sync.Mutex
		devices []string
	)
	seenDevices := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), devices...)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		devices = append(devices, r.TLS.VerifiedChains[0][0].Subject.CommonName)
		mu.Unlock()
		w.Header().Set("ETag", etagOf(img))
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(img))
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	var cert tls.Certificate
	cert.Certificate = [][]byte{devDER}
	cert.PrivateKey = crypto.Signer(signer)
	dev := client(srv, func(c *fetch.Config) { c.TLS.Certificates = []tls.Certificate{cert} })

	resp, err := dev.Get(context.Background(), fetch.Request{URL: srv.URL + "/fw", MaxSize: int64(len(img))})
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 60_000)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	rest, tail, err := get(t, dev, fetch.Request{URL: srv.URL + "/fw", Offset: 60_000, Validator: resp.Validator, MaxSize: int64(len(img))})
	if err != nil || rest.StatusCode != 206 || !bytes.Equal(append(first, tail...), img) {
		t.Fatalf("resume over mTLS: %+v, %v", rest, err)
	}
	if d := seenDevices(); len(d) != 2 || d[0] != "dev-1" || d[1] != "dev-1" {
		t.Fatalf("server saw devices %q", d)
	}

	_, err = client(srv).Get(context.Background(), fetch.Request{URL: srv.URL + "/fw"})
	if err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("a client without a certificate: %v", err)
	}
	if d := seenDevices(); len(d) != 2 {
		t.Fatalf("a request without a certificate reached the handler: %q", d)
	}
}
