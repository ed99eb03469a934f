package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/firmware/blockindex"
	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/fleet/exposure"
	"github.com/sigil-iot/sigil/pkg/config"
)

// firmwareCommand is `sigil firmware keygen | trust | sign | upload |
// approve | withdraw | list | show`. keygen, trust and sign work offline
// on files; the others call the API.
func firmwareCommand() *command {
	const id = "a release ID"
	printRelease := func(x *call, r *api.Release) error {
		return x.either(r, func() {
			x.printf("release %s: %s %s (security version %d), %s, %d approval(s)", r.ID, r.Name, r.Version, r.SecurityVersion, r.State, len(r.Approvals))
			if !r.Offerable {
				x.printf("; not offered: %s", r.NotOfferable)
			}
			x.printf("\n")
		})
	}
	return &command{name: "firmware", summary: "signed firmware releases: release keys, trust sets, signing, upload, approval, SBOMs", def: "list", subs: append([]*command{
		{name: "keygen", args: "[--key F|NAME://REF] [--pub F] [--alg A]", summary: "create a release signing key pair, in a file or a key service (offline)", setup: firmwareKeygen},
		{name: "trust", args: "[--threshold M] [--sequence N] [--out F] PUB...",
			summary: "write a release trust set: the keys that sign releases and how many must (offline)",
			note:    "What the fleet's release_trust names, and the statement a rotation of the release keys signs.", setup: firmwareTrust},
		{name: "manifest", args: "--image IMG --name N --version V --security-version S --models M,M [--expires D] [--pcr sha256:14=HEX] [--sbom F] [--block-index SIZE] [--out F]",
			summary: "write the canonical manifest of an image, unsigned, for any signer (offline)",
			note:    "Sign it with sigil firmware sign --manifest, cosign sign-blob --new-bundle-format, or a KMS.", setup: firmwareManifest},
		{name: "sign", args: "--key F|NAME://REF (--image IMG --name N --version V --security-version S --models M,M [--expires D] [--pcr sha256:14=HEX] | --manifest F | --statement F) [--bundle F]",
			summary: "build and sign a release manifest, or sign a manifest or trust statement (offline)",
			note:    "--key NAME://REF signs through a key service: the sigstore KMS plugin sigstore-kms-NAME on PATH, as cosign's --key does.", setup: firmwareSign},
		{name: "upload", args: "--manifest F --bundle F [--bundle F] [--image IMG] [-o json]", summary: "upload a signed release (and its image)", conn: connClient,
			setup: func(fs *flag.FlagSet) action {
				manifestFile := fs.String("manifest", "", "signed manifest file")
				var bundleFiles listFlag
				fs.Var(&bundleFiles, "bundle", "signature bundle file; repeat for each signer")
				imageFile := fs.String("image", "", "image file (omit for a re-signed release of an image the fleet holds)")
				return func(ctx context.Context, x *call) error {
					if *manifestFile == "" || len(bundleFiles) == 0 {
						return usageError{"firmware upload needs --manifest and at least one --bundle"}
					}
					r, err := uploadRelease(ctx, x.client, *manifestFile, bundleFiles, *imageFile)
					if err != nil {
						return err
					}
					return printRelease(x, r)
				}
			}},
		{name: "approve", args: "ID [-o json]", summary: "approve a release (it needs firmware_approvals people other than the uploader)", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				r, err := x.client.ApproveRelease(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return printRelease(x, r)
			}},
		{name: "withdraw", args: "ID [--reason R] [-o json]", summary: "withdraw a release: no campaign offers it any more", conn: connClient, pos: []string{id},
			setup: func(fs *flag.FlagSet) action {
				reason := fs.String("reason", "", "why the release is withdrawn")
				return func(ctx context.Context, x *call) error {
					r, err := x.client.WithdrawRelease(ctx, x.arg(0), *reason)
					if err != nil {
						return err
					}
					return printRelease(x, r)
				}
			}},
		{name: "list", args: "[-o json]", summary: "list the releases", conn: connClient,
			run: listing((*api.Client).Releases, "ID\tNAME\tVERSION\tSECURITY\tSTATE\tAPPROVALS\tOFFERED\tUPLOADED BY\tEXPIRES", func(tw io.Writer, l *api.ReleaseList) {
				for _, r := range l.Releases {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%v\t%s\t%s\n", r.ID, r.Name, r.Version, r.SecurityVersion, r.State,
						len(r.Approvals), r.Offerable, r.UploadedBy, rfc3339(r.Expires))
				}
			})},
		{name: "show", args: "ID", summary: "print a release (JSON)", conn: connClient, pos: []string{id},
			run: func(ctx context.Context, x *call) error {
				r, err := x.client.FirmwareRelease(ctx, x.arg(0))
				if err != nil {
					return err
				}
				return x.json(r)
			}},
	}, firmwareSBOMCommands()...)}
}

// uploadRelease uploads a signed manifest, its bundles and, when
// imageFile is set, the image.
func uploadRelease(ctx context.Context, c *api.Client, manifestFile string, bundleFiles []string, imageFile string) (*api.Release, error) {
	raw, err := os.ReadFile(manifestFile)
	if err != nil {
		return nil, err
	}
	var bundles [][]byte
	for _, p := range bundleFiles {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		bundles = append(bundles, b)
	}
	var image io.Reader
	size := int64(-1)
	if imageFile != "" {
		f, err := os.Open(imageFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil {
			size = fi.Size()
		}
		image = f
	}
	return c.UploadRelease(ctx, raw, bundles, image, size)
}

// firmwareKeygen: sigil firmware keygen --key FILE|NAME://REF [--pub FILE] [--alg A].
func firmwareKeygen(fs *flag.FlagSet) action {
	key := fs.String("key", "release.key", "private key file to create (mode 0600, PKCS#8 PEM), or NAME://REF: a key the key service creates")
	pub := fs.String("pub", "", "public key file to create (default: the key file with .pub; release.pub for a key service)")
	alg := fs.String("alg", "", "ecdsa-p256 (default for a file), ecdsa-p384 or ed25519; for a key service, its algorithm name (default: its default)")
	return func(ctx context.Context, x *call) error { return keygen(ctx, *key, *pub, *alg, x.stdout) }
}

func keygen(ctx context.Context, key, pub, alg string, stdout io.Writer) error {
	if sign.IsKMS(key) {
		if pub == "" {
			pub = "release.pub"
		}
		k, err := sign.CreateKMSKey(ctx, key, alg)
		if err != nil {
			return err
		}
		id, err := writePublicKey(pub, k)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "release key %s\n  private: %s (in the key service)\n  public:  %s\n", id, key, pub)
		return nil
	}
	if pub == "" {
		pub = strings.TrimSuffix(key, filepath.Ext(key)) + ".pub"
	}
	id, err := sign.GenerateKey(alg, key, pub, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "release key %s\n  private: %s (keep it offline)\n  public:  %s\n", id, key, pub)
	return nil
}

// writePublicKey writes k as PKIX PEM to a new file and returns its key ID.
func writePublicKey(path string, k crypto.PublicKey) (string, error) {
	id, err := verify.KeyID(k)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PUBLIC KEY", Bytes: der}); err != nil {
		f.Close()
		return "", err
	}
	return id, f.Close()
}

// firmwareTrust: sigil firmware trust [--threshold M] [--sequence N]
// [--out FILE] PUB... writes a release trust set (what the fleet's
// release_trust names, and the statement a rotation signs).
func firmwareTrust(fs *flag.FlagSet) action {
	threshold := fs.Int("threshold", 1, "how many of the keys must sign a release")
	sequence := fs.Uint64("sequence", 1, "sequence number; a rotation's is the replaced set's plus one")
	out := fs.String("out", "", "file to write (default: standard output)")
	return func(_ context.Context, x *call) error {
		return writeTrust(x.args, *threshold, *sequence, *out, x.stdout)
	}
}

func writeTrust(pubs []string, threshold int, sequence uint64, out string, stdout io.Writer) error {
	if len(pubs) == 0 {
		return usageError{"firmware trust needs the public key files of the release keys"}
	}
	var keys []crypto.PublicKey
	for _, p := range pubs {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		k, err := verify.ParsePublicKey(b)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		keys = append(keys, k)
	}
	ts, err := verify.NewTrustSet(sequence, threshold, keys...)
	if err != nil {
		return usageError{err.Error()}
	}
	b, err := ts.Marshal()
	if err != nil {
		return err
	}
	if out == "" {
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "trust set %s: sequence %d, %d of %d keys must sign\n", out, ts.Sequence(), ts.Threshold(), len(ts.KeyIDs()))
	return nil
}

// manifestFlags defines the flags a manifest is built from and returns
// what they hold.
func manifestFlags(fs *flag.FlagSet, outFlag string) func() manifestBuild {
	imageFile := fs.String("image", "", "image to build a manifest for")
	name := fs.String("name", "", "firmware name (build)")
	version := fs.String("version", "", "semantic version (build)")
	sv := fs.Uint64("security-version", 0, "anti-rollback security version (build)")
	models := fs.String("models", "", "comma-separated hardware models (build)")
	expires := fs.Duration("expires", 90*24*time.Hour, "how long the release metadata stays valid (build)")
	manifestOut := fs.String(outFlag, "", "where to write the built manifest (default: the image + .manifest.json)")
	sbom := fs.String("sbom", "", "SBOM of the image (CycloneDX or SPDX JSON), bound into the manifest by digest (build)")
	blocks := fs.Int64("block-index", 0, "block size in bytes (e.g. 65536): write the image's block-hash index to the image + .blocks and bind it into the manifest, for adaptive updates (build; 0: none)")
	var pcrs listFlag
	fs.Var(&pcrs, "pcr", "expected PCR after install, BANK:INDEX=HEX (build; repeatable)")
	return func() manifestBuild {
		return manifestBuild{image: *imageFile, name: *name, version: *version, securityVersion: *sv, models: *models, expires: *expires, pcrs: pcrs,
			sbom: *sbom, blockSize: *blocks, out: *manifestOut}
	}
}

// firmwareManifest: sigil firmware manifest --image IMG ... [--out F]
// writes the canonical manifest of an image without signing it, so that
// any signer (sigil firmware sign --manifest, cosign sign-blob, a KMS) can.
func firmwareManifest(fs *flag.FlagSet) action {
	build := manifestFlags(fs, "out")
	return func(_ context.Context, x *call) error {
		b := build()
		if b.image == "" {
			return usageError{"firmware manifest needs --image and the manifest fields"}
		}
		_, _, err := writeManifest(b, x.stdout)
		return err
	}
}

// writeManifest builds the manifest of b, writes it and returns its bytes
// and the file written.
func writeManifest(b manifestBuild, stdout io.Writer) ([]byte, string, error) {
	m, err := buildManifest(b)
	if err != nil {
		return nil, "", err
	}
	if b.blockSize != 0 {
		if err := writeBlockIndex(m, b); err != nil {
			return nil, "", err
		}
		fmt.Fprintf(stdout, "block index %s: %d-byte blocks, sha256 %x\n", b.image+blockindex.Suffix, m.Blocks.BlockSize, m.Blocks.SHA256)
	}
	msg, err := m.Marshal()
	if err != nil {
		return nil, "", usageError{err.Error()}
	}
	target := b.out
	if target == "" {
		target = b.image + ".manifest.json"
	}
	if err := os.WriteFile(target, msg, 0o644); err != nil {
		return nil, "", err
	}
	fmt.Fprintf(stdout, "manifest %s: %s %s, security version %d, %d bytes, sha256 %x\n", target, m.Name, m.Version, m.SecurityVersion, m.Size, m.SHA256)
	return msg, target, nil
}

// writeBlockIndex writes the block-hash index of b's image beside it
// (IMG.blocks, the name the fleet and devices use) and binds it into m.
func writeBlockIndex(m *manifest.Manifest, b manifestBuild) error {
	if err := blockindex.CheckGeometry(b.blockSize, m.Size); err != nil {
		return usageError{"--block-index: " + err.Error()}
	}
	f, err := os.Open(b.image)
	if err != nil {
		return err
	}
	defer f.Close()
	index, err := blockindex.Build(f, b.blockSize)
	if err != nil {
		return err
	}
	m.Blocks = &manifest.Blocks{BlockSize: b.blockSize, SHA256: sha256.Sum256(index)}
	return os.WriteFile(b.image+blockindex.Suffix, index, 0o644)
}

// firmwareSign: sign an existing manifest (--manifest) or trust statement
// (--statement), or build the manifest of an image and sign it.
func firmwareSign(fs *flag.FlagSet) action {
	keyFile := fs.String("key", "", "private key file (PEM; cosign's encrypted keys take the password from $COSIGN_PASSWORD), or NAME://REF: a key in a key service (sigstore KMS plugin sigstore-kms-NAME)")
	manifestFile := fs.String("manifest", "", "sign this manifest (canonical JSON) instead of building one")
	statement := fs.String("statement", "", "sign this trust statement (`sigil firmware trust` output) for a rotation")
	bundleOut := fs.String("bundle", "", "bundle file to write (default: the signed file + .<key id>.bundle)")
	build := manifestFlags(fs, "manifest-out")
	return func(ctx context.Context, x *call) error {
		return signFile(ctx, *keyFile, *manifestFile, *statement, *bundleOut, build(), x.stdout)
	}
}

// manifestBuild is what firmware sign builds a manifest from.
type manifestBuild struct {
	image, name, version string
	securityVersion      uint64
	models               string
	expires              time.Duration
	pcrs                 []string
	sbom                 string // CycloneDX JSON SBOM file ("": none)
	blockSize            int64  // block size of the block-hash index (0: none)
	out                  string // where to write the manifest ("": the image + .manifest.json)
}

// openKey returns the release key: a key file, or a key in a key service
// (NAME://REF).
func openKey(ctx context.Context, ref string) (crypto.Signer, error) {
	if sign.IsKMS(ref) {
		return sign.OpenKMS(ctx, ref)
	}
	return sign.LoadKeyFile(ref, []byte(os.Getenv("COSIGN_PASSWORD")))
}

// signFile signs the manifest file, or the trust statement file, or a
// manifest it builds, with the key keyRef names (a file or a key service).
func signFile(ctx context.Context, keyRef, manifestFile, statement, bundleOut string, build manifestBuild, stdout io.Writer) error {
	if keyRef == "" {
		return usageError{"firmware sign needs --key"}
	}
	key, err := openKey(ctx, keyRef)
	if err != nil {
		return err
	}
	signer, err := sign.New(sign.Config{Key: key})
	if err != nil {
		return err
	}
	var msg []byte
	target := ""
	switch {
	case manifestFile != "" && statement != "":
		return usageError{"give --manifest or --statement, not both"}
	case manifestFile != "":
		if msg, err = os.ReadFile(manifestFile); err != nil {
			return err
		}
		if _, err := manifest.Parse(msg); err != nil {
			return err
		}
		target = manifestFile
	case statement != "":
		if msg, err = os.ReadFile(statement); err != nil {
			return err
		}
		msg = []byte(strings.TrimSuffix(string(msg), "\n"))
		if _, err := verify.ParseTrustSet(msg); err != nil {
			return err
		}
		target = statement
	default:
		if build.image == "" {
			return usageError{"firmware sign needs --manifest, --statement, or --image with the manifest fields"}
		}
		if msg, target, err = writeManifest(build, stdout); err != nil {
			return err
		}
	}
	bundle, err := signer.Sign(msg)
	if err != nil {
		return err
	}
	out := bundleOut
	if out == "" {
		out = target + "." + bundleTag(signer.KeyID()) + ".bundle"
	}
	if err := os.WriteFile(out, bundle, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "bundle %s (key %s)\n", out, signer.KeyID())
	return nil
}

// bundleTag is a file-name-safe prefix of a key ID.
func bundleTag(keyID string) string {
	t := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, keyID)
	return t[:min(len(t), 8)]
}

// buildManifest describes an image file.
func buildManifest(b manifestBuild) (*manifest.Manifest, error) {
	f, err := os.Open(b.image)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, err
	}
	m := &manifest.Manifest{Name: b.name, Version: b.version, SecurityVersion: b.securityVersion, Size: n,
		Expires: time.Now().Add(b.expires).UTC().Truncate(time.Second)}
	copy(m.SHA256[:], h.Sum(nil))
	for _, s := range strings.Split(b.models, ",") {
		if s = strings.TrimSpace(s); s != "" {
			m.Models = append(m.Models, s)
		}
	}
	for _, p := range b.pcrs {
		bank, rest, ok1 := strings.Cut(p, ":")
		idx, value, ok2 := strings.Cut(rest, "=")
		i, err := strconv.Atoi(idx)
		if !ok1 || !ok2 || err != nil {
			return nil, usageError{fmt.Sprintf("--pcr %q: want BANK:INDEX=HEX, e.g. sha256:14=ab12…", p)}
		}
		if m.Measurements == nil {
			m.Measurements = &manifest.Measurements{PCRs: map[string]map[int]string{}}
		}
		if m.Measurements.PCRs[bank] == nil {
			m.Measurements.PCRs[bank] = map[int]string{}
		}
		m.Measurements.PCRs[bank][i] = strings.ToLower(value)
	}
	if b.sbom != "" {
		sb, err := os.ReadFile(b.sbom)
		if err != nil {
			return nil, err
		}
		format := manifest.SBOMCycloneDX
		cs, err := exposure.ParseSBOM(sb)
		if err != nil {
			if spdx, spdxErr := exposure.ParseSPDX(sb); spdxErr == nil {
				format, cs, err = manifest.SBOMSPDX, spdx, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: neither CycloneDX nor SPDX JSON: %w", b.sbom, err)
		}
		if len(cs) == 0 {
			return nil, usageError{b.sbom + ": the SBOM lists no component with a package URL"}
		}
		m.SBOM = &manifest.SBOM{Format: format, SHA256: sha256.Sum256(sb)}
	}
	if err := m.Validate(); err != nil {
		return nil, usageError{err.Error()}
	}
	return m, nil
}

// campaignsCommand is `sigil campaigns create | start | pause | resume |
// abort | rollback | list | show | devices`.
func campaignsCommand() *command {
	const id = "a campaign ID"
	// act creates or rolls back a campaign (verb "create", "rollback"),
	// or changes its state (start, pause, resume, abort).
	act := func(verb string) func(fs *flag.FlagSet) action {
		return func(fs *flag.FlagSet) action {
			var definition func() (campaign.Definition, error)
			if verb == "create" || verb == "rollback" {
				definition = definitionFlags(fs)
			}
			var at *string
			if verb == "start" {
				at = fs.String("at", "", "start time, RFC 3339 (default now)")
			}
			return func(ctx context.Context, x *call) error {
				var cm *campaign.Campaign
				var err error
				switch verb {
				case "create", "rollback":
					d, err := definition()
					if err != nil {
						return err
					}
					if verb == "create" {
						cm, err = x.client.CreateCampaign(ctx, d, x.justification())
					} else {
						cm, err = x.client.RollbackCampaign(ctx, x.arg(0), d, x.justification())
					}
					if err != nil {
						return err
					}
				default:
					var when time.Time
					if at != nil && *at != "" {
						if when, err = time.Parse(time.RFC3339, *at); err != nil {
							return usageError{"--at: " + err.Error()}
						}
					}
					if cm, err = x.client.CampaignAction(ctx, x.arg(0), verb, x.justification(), when); err != nil {
						return err
					}
				}
				return printCampaign(ctx, x, cm)
			}
		}
	}
	return &command{name: "campaigns", summary: "firmware rollout campaigns: waves of devices, thresholds, pause and rollback", def: "list",
		note: "State changes take --justification (needed under two_person_rule).",
		subs: []*command{
			{name: "create", args: "--release ID (--group G | --model M | --tags T,T | --devices ID,ID) [--canary N --growth F | --sizes 1,10] [--failure F] [--timeout D] [--definition FILE] [--justification T]",
				summary: "create a campaign (it starts with sigil campaigns start)", conn: connClient, setup: act("create")},
			{name: "start", args: "ID [--at TIME] [--justification T]", summary: "start a campaign, now or at a time", conn: connClient, pos: []string{id}, setup: act("start")},
			{name: "pause", args: "ID [--justification T]", summary: "pause a campaign: no more devices are announced", conn: connClient, pos: []string{id}, setup: act("pause")},
			{name: "resume", args: "ID [--justification T]", summary: "resume a paused campaign", conn: connClient, pos: []string{id}, setup: act("resume")},
			{name: "abort", args: "ID [--justification T]", summary: "abort a campaign for good", conn: connClient, pos: []string{id}, setup: act("abort")},
			{name: "rollback", args: "ID --release ID --justification T", summary: "roll the devices that committed a campaign back to another release",
				conn: connClient, pos: []string{id}, setup: act("rollback")},
			{name: "list", args: "[-o json]", summary: "list the campaigns", conn: connClient,
				run: listing((*api.Client).Campaigns, "ID\tNAME\tSTATE\tRELEASE\tWAVE\tDEVICES\tCOMMITTED\tFAILED\tIN FLIGHT", func(tw io.Writer, l *api.CampaignList) {
					for _, c := range l.Campaigns {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", c.ID, c.Definition.Name, c.State, c.Definition.Release, c.Wave,
							c.Total, c.Counts.Committed, c.Counts.Failures(), c.Counts.InFlight())
					}
				})},
			{name: "show", args: "ID [-o json]", summary: "show a campaign and its waves", conn: connClient, pos: []string{id},
				run: func(ctx context.Context, x *call) error {
					cm, err := x.client.Campaign(ctx, x.arg(0))
					if err != nil {
						return err
					}
					return printCampaign(ctx, x, cm)
				}},
			{name: "devices", args: "ID [--step S] [--wave N] [--after ID] [--limit N] [-o json]", summary: "list a campaign's devices and where each is",
				conn: connClient, pos: []string{id},
				setup: func(fs *flag.FlagSet) action {
					step := fs.String("step", "", "only devices at this step")
					wave := fs.Int("wave", 0, "only devices of this wave")
					after := fs.String("after", "", "page after this device ID")
					limit := fs.Int("limit", 0, "devices per page (default 100)")
					return func(ctx context.Context, x *call) error {
						page, err := x.client.CampaignDevices(ctx, x.arg(0), campaign.DeviceFilter{Step: campaign.Step(*step), Wave: *wave, After: *after, Limit: *limit})
						if err != nil {
							return err
						}
						if x.jsonOut() {
							return x.json(page)
						}
						size := int64(0) // the release's image, to set each device's claim against
						if cm, err := x.client.Campaign(ctx, x.arg(0)); err == nil {
							size = imageSize(ctx, x, cm.Definition.Release)
						}
						err = x.plainTable("DEVICE\tWAVE\tSTEP\tREASON\tRUNNING\tATTEMPTS\tUPDATED\tFETCHED (CLAIMED)", func(tw io.Writer) {
							for _, d := range page.Devices {
								reason := ""
								if d.Reason != 0 {
									reason = d.Reason.String()
								}
								fetched := strconv.FormatInt(d.ClaimedFetchedBytes, 10)
								if size > 0 && d.ClaimedFetchedBytes > 0 {
									fetched += fmt.Sprintf(" (%.1f %% of the image)", 100*float64(d.ClaimedFetchedBytes)/float64(size))
								}
								fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.Wave, d.Step, reason, d.RunningVersion, d.Attempts, rfc3339(d.Updated), fetched)
							}
						})
						if err == nil && page.Next != "" {
							x.printf("more: --after %s\n", page.Next)
						}
						return err
					}
				}},
		}}
}

// definitionFlags defines the flags of a campaign definition and returns
// the function that builds it: from --definition, with the flags given
// overriding its fields.
func definitionFlags(fs *flag.FlagSet) func() (campaign.Definition, error) {
	defFile := fs.String("definition", "", "campaign definition as JSON; the flags below override its fields")
	release := fs.String("release", "", "release ID to install")
	name := fs.String("name", "", "campaign name")
	group := fs.String("group", "", "target: devices of this group")
	model := fs.String("model", "", "target: devices of this model")
	devices := fs.String("devices", "", "target: comma-separated device IDs")
	tags := fs.String("tags", "", "target: devices carrying every one of these comma-separated tags")
	canary := fs.Int("canary", 0, "size of the first wave (default 1)")
	growth := fs.Float64("growth", 0, "each wave's size times this gives the next (default 2)")
	sizes := fs.String("sizes", "", "explicit comma-separated wave sizes instead of --canary/--growth")
	success := fs.Float64("success", 0, "fraction of a wave that must commit before the next opens (default 1)")
	failure := fs.Float64("failure", -1, "fraction of a wave that may fail before --on-failure (default 0: any failure)")
	onFailure := fs.String("on-failure", "", "pause (default) or abort")
	timeout := fs.Duration("timeout", 0, "per-device timeout (default 1h)")
	retries := fs.Int("retries", -1, "announce a silent device again this many times (default 0)")
	maxInFlight := fs.Int("max-in-flight", 0, "most devices in flight at once (default no bound)")
	return func() (campaign.Definition, error) {
		var d campaign.Definition
		if *defFile != "" {
			if err := config.Load(*defFile, &d); err != nil {
				return d, usageError{err.Error()}
			}
		}
		set := func(dst *string, v string) {
			if v != "" {
				*dst = v
			}
		}
		set(&d.Release, *release)
		set(&d.Name, *name)
		set(&d.Targets.Group, *group)
		set(&d.Targets.Model, *model)
		if *devices != "" {
			d.Targets.DeviceIDs = strings.Split(*devices, ",")
		}
		if *tags != "" {
			d.Targets.Tags = strings.Split(*tags, ",")
		}
		if *canary > 0 {
			d.Waves.Canary = *canary
		}
		if *growth > 0 {
			d.Waves.Growth = *growth
		}
		for _, s := range strings.FieldsFunc(*sizes, func(r rune) bool { return r == ',' }) {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return d, usageError{"--sizes: " + err.Error()}
			}
			d.Waves.Sizes = append(d.Waves.Sizes, n)
		}
		if *success > 0 {
			d.SuccessThreshold = *success
		}
		if *failure >= 0 {
			d.FailureThreshold = *failure
		}
		if *onFailure != "" {
			d.OnFailure = campaign.Action(*onFailure)
		}
		if *timeout > 0 {
			d.DeviceTimeout = config.Duration(*timeout)
		}
		if *retries >= 0 {
			d.Retries = *retries
		}
		if *maxInFlight > 0 {
			d.MaxInFlight = *maxInFlight
		}
		return d, nil
	}
}

// imageSize is the size of release id's image, 0 when the release cannot
// be read (a caller without firmware.read, say): the figures are then
// shown without it.
func imageSize(ctx context.Context, x *call, id string) int64 {
	r, err := x.client.FirmwareRelease(ctx, id)
	if err != nil {
		return 0
	}
	return r.Size
}

// ofImage sets the bytes devices say they fetched against a full download
// of the release's image by each of the campaign's devices (adaptive
// updates fetch only the blocks a device lacks); empty when the size is
// unknown.
func ofImage(ctx context.Context, x *call, release string, fetched int64, devices int) string {
	size := imageSize(ctx, x, release)
	if size <= 0 || devices <= 0 {
		return ""
	}
	full := size * int64(devices)
	return fmt.Sprintf(": %.1f %% of a full download by each of its %d devices (%d bytes each)", 100*float64(fetched)/float64(full), devices, size)
}

// printCampaign writes a campaign and its waves.
func printCampaign(ctx context.Context, x *call, cm *campaign.Campaign) error {
	if x.jsonOut() {
		return x.json(cm)
	}
	x.printf("campaign %s (%s): %s, release %s, %d devices\n", cm.ID, cm.Definition.Name, cm.State, cm.Definition.Release, cm.Total)
	if cm.Why != "" {
		x.printf("  last change by %s: %s\n", cm.ChangedBy, cm.Why)
	}
	if cm.ClaimedFetchedBytes > 0 {
		x.printf("  devices say they fetched %d bytes in all%s\n", cm.ClaimedFetchedBytes, ofImage(ctx, x, cm.Definition.Release, cm.ClaimedFetchedBytes, cm.Total))
	}
	return x.plainTable("  WAVE\tSIZE\tNEED\tMAX FAIL\tIN FLIGHT\tCOMMITTED\tFAILED\tROLLED BACK\tTIMED OUT\tTRIPPED", func(tw io.Writer) {
		for _, w := range cm.Waves {
			k := w.Counts
			fmt.Fprintf(tw, "  %d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%v\n", w.Number, w.Size, w.Need, w.MaxFailures, k.InFlight(),
				k.Committed, k.Failed, k.RolledBack, k.TimedOut, w.Tripped)
		}
	})
}
