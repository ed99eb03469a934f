package verifier

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Files of trust the fleet's configuration names: the EK allow-list and
// the claim CAs.

// LoadEKTrust builds the EK trust of the fleet's configuration: the
// manufacturer CAs of caDir (LoadCADir: ek_ca_dir) and the allow-list
// file (LoadAllowList: ek_allowlist); either may be "" (none).
func LoadEKTrust(caDir, allowList string) (*EKTrust, error) {
	trust := &EKTrust{}
	var err error
	if caDir != "" {
		if trust.Roots, trust.Intermediates, err = LoadCADir(caDir); err != nil {
			return nil, err
		}
	}
	if allowList != "" {
		if trust.AllowList, err = LoadAllowList(allowList); err != nil {
			return nil, err
		}
	}
	return trust, nil
}

// LoadAllowList reads an EK allow-list file (EKTrust.AllowList): SHA-256
// fingerprints of EK public keys (PKIX, hex, any case), one per line, '#'
// comments; a line that is not a fingerprint is an error naming it.
func LoadAllowList(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("verifier: allow-list: %w", err)
	}
	out := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = strings.TrimSpace(line[:j])
		}
		if line == "" {
			continue
		}
		line = strings.ToLower(line)
		if len(line) != 64 || strings.Trim(line, "0123456789abcdef") != "" {
			return nil, fmt.Errorf("verifier: allow-list %s line %d: not a SHA-256 hex fingerprint", path, i+1)
		}
		out[line] = true
	}
	return out, nil
}

// LoadClaimCAs reads a directory of claim CA certificates (the batch
// credentials a device maker installs for the bootstrap connection),
// checked as LoadCADir checks a directory: its PEM CA certificates. A
// directory without one is an error.
func LoadClaimCAs(dir string) ([]*x509.Certificate, error) {
	roots, _, err := LoadCADir(dir)
	if err != nil {
		return nil, err
	}
	cas := caCerts(dir)
	if roots == nil || len(cas) == 0 {
		return nil, fmt.Errorf("verifier: claim_ca_dir %s holds no CA certificate", dir)
	}
	return cas, nil
}

// caCerts reads the PEM CA certificates of a directory (LoadCADir already
// checked them).
func caCerts(dir string) []*x509.Certificate {
	var out []*x509.Certificate
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				break
			}
			if c, err := x509.ParseCertificate(blk.Bytes); err == nil && c.IsCA {
				out = append(out, c)
			}
		}
	}
	return out
}
