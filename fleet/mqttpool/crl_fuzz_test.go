package mqttpool

import "testing"

// FuzzParseCRL: bytes from the network never crash the CRL parser.
func FuzzParseCRL(f *testing.F) {
	f.Add([]byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		if crl, err := parseCRL(b); err == nil && crl == nil {
			t.Fatal("no CRL and no error")
		}
	})
}
