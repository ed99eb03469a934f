package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/bridge"
)

// Files `sigil bridge create` writes in its --out directory.
const (
	bridgeKeyFile  = "bridge.key"
	bridgeCertFile = "bridge.crt"
	bridgeCAFile   = "ca.crt"
	bridgeConfFile = "sigil-bridge.conf"
)

// bridgeCommand is `sigil bridge create|list|revoke`: the credentials of
// the plant brokers that bridge a site's devices to the fleet.
func bridgeCommand() *command {
	return &command{name: "bridge", summary: "OT bridges: the credentials of plant MQTT brokers bridged to the fleet", def: "list",
		note: "A bridge may publish and subscribe only under sigil/site/<site>/ on the fleet's broker (docs/BRIDGES.md).",
		subs: []*command{
			{name: "create", args: "SITE --out DIR [--fleet-addr HOST:PORT] [--plant-dir DIR] [--lifetime D] [-o json]",
				summary: "make a key here, have the fleet issue the site's bridge credential, write the key, certificate, CA and Mosquitto bridge section", conn: connClient,
				pos: []string{"a site"},
				setup: func(fs *flag.FlagSet) action {
					out := fs.String("out", "", "directory to write bridge.key (0600), bridge.crt, ca.crt and sigil-bridge.conf into; created, must not hold them already")
					fleetAddr := fs.String("fleet-addr", "", "the fleet's MQTT listener as the plant broker reaches it, for sigil-bridge.conf (without it no .conf is written)")
					plantDir := fs.String("plant-dir", "", "where the files will be on the plant broker, for sigil-bridge.conf (default: --out, absolute)")
					lifetime := fs.String("lifetime", "", "credential lifetime, e.g. 2160h (default 90 days, at most 397 days)")
					return func(ctx context.Context, x *call) error {
						if *out == "" {
							return usageError{"bridge create needs --out DIR"}
						}
						return createBridge(ctx, x, x.arg(0), *out, *fleetAddr, *plantDir, *lifetime)
					}
				}},
			{name: "list", args: "[-o json]", summary: "list the bridges, their current credentials and health (connected, device messages accepted and refused)", conn: connClient,
				run: func(ctx context.Context, x *call) error {
					l, err := x.client.Bridges(ctx)
					if err != nil {
						return err
					}
					return x.table(l, "SITE\tCURRENT\tCREDENTIALS\tPREFIX\tCONNECTED\tACCEPTED\tREFUSED", func(tw io.Writer) {
						for _, b := range l.Bridges {
							cur := b.Current
							if cur == "" {
								cur = "-"
							}
							var refused uint64
							for _, n := range b.Health.Refused {
								refused += n
							}
							fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%t\t%d\t%d\n", b.Site, cur, len(b.Certs), b.Prefix, b.Health.Connected, b.Health.Accepted, refused)
						}
					})
				}},
			{name: "assign", args: "SITE DEVICE [-o json]", summary: "assign a device to a site: the fleet accepts its bridged messages only through that site's bridge", conn: connClient,
				pos: []string{"a site", "a device"},
				run: func(ctx context.Context, x *call) error {
					v, err := x.client.AssignSite(ctx, x.arg(1), x.arg(0), "")
					if err != nil {
						return err
					}
					return x.either(v, func() { x.printf("device %s assigned to site %s\n", v.Device, x.arg(0)) })
				}},
			{name: "unassign", args: "SITE DEVICE [-o json]", summary: "end a device's assignment to a site: its bridged messages are refused", conn: connClient,
				pos: []string{"a site", "a device"},
				run: func(ctx context.Context, x *call) error {
					v, err := x.client.AssignSite(ctx, x.arg(1), "", x.arg(0))
					if err != nil {
						return err
					}
					return x.either(v, func() { x.printf("device %s no longer assigned to site %s\n", v.Device, x.arg(0)) })
				}},
			{name: "revoke", args: "SITE [--reason R] [--comment C] [-o json]", summary: "revoke a site's bridge credential: into the CRL, its sessions cut at once", conn: connClient,
				pos: []string{"a site"},
				setup: func(fs *flag.FlagSet) action {
					reason := fs.String("reason", "", "RFC 5280 reason: keyCompromise, affiliationChanged, superseded, cessationOfOperation, ...")
					comment := fs.String("comment", "", "why, for the audit log")
					return func(ctx context.Context, x *call) error {
						v, err := x.client.RevokeBridge(ctx, x.arg(0), *reason, *comment)
						if err != nil {
							return err
						}
						return x.either(v, func() { x.printf("revoked the bridge credential of site %s\n", v.Site) })
					}
				}},
		}}
}

// createBridge makes the bridge's P-256 key here (it never goes to the
// fleet), sends a CSR, and writes the key, the certificate, the fleet's
// trust bundle and, with fleetAddr, the Mosquitto bridge section.
func createBridge(ctx context.Context, x *call, site, out, fleetAddr, plantDir, lifetime string) error {
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	for _, f := range []string{bridgeKeyFile, bridgeCertFile, bridgeCAFile, bridgeConfFile} {
		if _, err := os.Stat(filepath.Join(out, f)); err == nil {
			return fmt.Errorf("%s exists already: choose another --out", filepath.Join(out, f))
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bridge-" + site}}, key)
	if err != nil {
		return err
	}
	created, err := x.client.CreateBridge(ctx, api.BridgeRequest{Site: site, Lifetime: lifetime,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))})
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		bridgeKeyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		bridgeCertFile: []byte(created.Certificate),
		bridgeCAFile:   []byte(created.CA),
	}
	if fleetAddr != "" {
		if plantDir == "" {
			if plantDir, err = filepath.Abs(out); err != nil {
				return err
			}
		}
		conf, err := bridge.MosquittoConf(bridge.Plant{Site: site, Address: fleetAddr, CAFile: filepath.Join(plantDir, bridgeCAFile),
			CertFile: filepath.Join(plantDir, bridgeCertFile), KeyFile: filepath.Join(plantDir, bridgeKeyFile)})
		if err != nil {
			return err
		}
		files[bridgeConfFile] = []byte(conf)
	}
	for name, b := range files {
		mode := os.FileMode(0o644)
		if name == bridgeKeyFile {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(out, name), b, mode); err != nil {
			return err
		}
	}
	return x.either(created, func() {
		x.printf("issued the bridge credential of site %s: serial %s, valid until %s\n", site, created.Serial, rfc3339(created.NotAfter))
		x.printf("wrote %s\n", out)
		x.printf("the bridge publishes and subscribes under %s on the fleet's broker\n", created.Prefix)
	})
}
