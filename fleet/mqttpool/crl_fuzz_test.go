package mqttpool

import "testing"

// FuzzParseCRL: bytes from the network never crash the parser of a CRL
// or a CRL set.
func FuzzParseCRL(f *testing.F) {
	f.Add([]byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, crls, err := parseSet(b); err == nil && len(crls) == 0 {
			t.Fatal("no CRL and no error")
		}
	})
}
