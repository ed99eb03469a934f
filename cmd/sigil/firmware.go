package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sigil-iot/sigil/firmware/manifest"
	"github.com/sigil-iot/sigil/firmware/sign"
	"github.com/sigil-iot/sigil/firmware/verify"
	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/campaign"
	"github.com/sigil-iot/sigil/pkg/config"
)

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// cmdFirmware: sigil firmware keygen | trust | sign | upload | approve |
// withdraw | list | show. keygen, trust and sign work offline on files;
// the others call the API.
func cmdFirmware(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	switch sub {
	case "keygen":
		return firmwareKeygen(args, stdout)
	case "trust":
		return firmwareTrust(args, stdout)
	case "sign":
		return firmwareSign(args, stdout)
	}
	fs := flag.NewFlagSet("firmware "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	manifestFile := fs.String("manifest", "", "signed manifest file (upload)")
	var bundleFiles listFlag
	fs.Var(&bundleFiles, "bundle", "signature bundle file; repeat for each signer (upload)")
	imageFile := fs.String("image", "", "image file (upload; omit for a re-signed release of an image the fleet holds)")
	reason := fs.String("reason", "", "why the release is withdrawn (withdraw)")
	var id string
	if sub == "approve" || sub == "withdraw" || sub == "show" {
		var err error
		if id, args, err = positional(args, "firmware "+sub+" needs a release ID"); err != nil {
			return err
		}
	}
	c, err := af.parse(fs, args)
	if err != nil {
		return err
	}
	printRelease := func(r *api.Release) error {
		if *af.output == "json" {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "release %s: %s %s (security version %d), %s, %d approval(s)", r.ID, r.Name, r.Version, r.SecurityVersion, r.State, len(r.Approvals))
		if !r.Offerable {
			fmt.Fprintf(stdout, "; not offered: %s", r.NotOfferable)
		}
		fmt.Fprintln(stdout)
		return nil
	}
	switch sub {
	case "upload":
		if *manifestFile == "" || len(bundleFiles) == 0 {
			return usageError{"firmware upload needs --manifest and at least one --bundle"}
		}
		raw, err := os.ReadFile(*manifestFile)
		if err != nil {
			return err
		}
		var bundles [][]byte
		for _, p := range bundleFiles {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			bundles = append(bundles, b)
		}
		var image io.Reader
		size := int64(-1)
		if *imageFile != "" {
			f, err := os.Open(*imageFile)
			if err != nil {
				return err
			}
			defer f.Close()
			if fi, err := f.Stat(); err == nil {
				size = fi.Size()
			}
			image = f
		}
		r, err := c.UploadRelease(ctx, raw, bundles, image, size)
		if err != nil {
			return err
		}
		return printRelease(r)
	case "approve":
		r, err := c.ApproveRelease(ctx, id)
		if err != nil {
			return err
		}
		return printRelease(r)
	case "withdraw":
		r, err := c.WithdrawRelease(ctx, id, *reason)
		if err != nil {
			return err
		}
		return printRelease(r)
	case "show":
		r, err := c.FirmwareRelease(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, r)
	case "list":
		l, err := c.Releases(ctx)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "ID\tNAME\tVERSION\tSECURITY\tSTATE\tAPPROVALS\tOFFERED\tUPLOADED BY\tEXPIRES", func(tw io.Writer) {
			for _, r := range l.Releases {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%v\t%s\t%s\n", r.ID, r.Name, r.Version, r.SecurityVersion, r.State,
					len(r.Approvals), r.Offerable, r.UploadedBy, r.Expires.Format(time.RFC3339))
			}
		})
	}
	return usageError{"unknown firmware subcommand " + sub}
}

// firmwareKeygen: sigil firmware keygen --key FILE [--pub FILE] [--alg A].
func firmwareKeygen(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("firmware keygen", flag.ContinueOnError)
	key := fs.String("key", "release.key", "private key file to create (mode 0600, PKCS#8 PEM)")
	pub := fs.String("pub", "", "public key file to create (default: the key file with .pub)")
	alg := fs.String("alg", sign.ECDSAP256, "ecdsa-p256, ecdsa-p384 or ed25519")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *pub == "" {
		*pub = strings.TrimSuffix(*key, filepath.Ext(*key)) + ".pub"
	}
	id, err := sign.GenerateKey(*alg, *key, *pub, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "release key %s\n  private: %s (keep it offline)\n  public:  %s\n", id, *key, *pub)
	return nil
}

// firmwareTrust: sigil firmware trust [--threshold M] [--sequence N]
// [--out FILE] PUB... writes a release trust set (what the fleet's
// release_trust names, and the statement a rotation signs).
func firmwareTrust(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("firmware trust", flag.ContinueOnError)
	threshold := fs.Int("threshold", 1, "how many of the keys must sign a release")
	sequence := fs.Uint64("sequence", 1, "sequence number; a rotation's is the replaced set's plus one")
	out := fs.String("out", "", "file to write (default: standard output)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"firmware trust needs the public key files of the release keys"}
	}
	var keys []crypto.PublicKey
	for _, p := range fs.Args() {
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
	ts, err := verify.NewTrustSet(*sequence, *threshold, keys...)
	if err != nil {
		return usageError{err.Error()}
	}
	b, err := ts.Marshal()
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "trust set %s: sequence %d, %d of %d keys must sign\n", *out, ts.Sequence(), ts.Threshold(), len(ts.KeyIDs()))
	return nil
}

// firmwareSign: sign an existing manifest (--manifest) or trust statement
// (--statement), or build the manifest of an image and sign it.
func firmwareSign(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("firmware sign", flag.ContinueOnError)
	keyFile := fs.String("key", "", "private key file (PEM; cosign's encrypted keys take the password from $COSIGN_PASSWORD)")
	manifestFile := fs.String("manifest", "", "sign this manifest (canonical JSON) instead of building one")
	statement := fs.String("statement", "", "sign this trust statement (`sigil firmware trust` output) for a rotation")
	bundleOut := fs.String("bundle", "", "bundle file to write (default: the signed file + .<key id>.bundle)")
	imageFile := fs.String("image", "", "image to build a manifest for")
	name := fs.String("name", "", "firmware name (build)")
	version := fs.String("version", "", "semantic version (build)")
	sv := fs.Uint64("security-version", 0, "anti-rollback security version (build)")
	models := fs.String("models", "", "comma-separated hardware models (build)")
	expires := fs.Duration("expires", 90*24*time.Hour, "how long the release metadata stays valid (build)")
	manifestOut := fs.String("manifest-out", "", "where to write the built manifest (default: the image + .manifest.json)")
	var pcrs listFlag
	fs.Var(&pcrs, "pcr", "expected PCR after install, BANK:INDEX=HEX (build; repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *keyFile == "" {
		return usageError{"firmware sign needs --key"}
	}
	key, err := sign.LoadKeyFile(*keyFile, []byte(os.Getenv("COSIGN_PASSWORD")))
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
	case *manifestFile != "" && *statement != "":
		return usageError{"give --manifest or --statement, not both"}
	case *manifestFile != "":
		if msg, err = os.ReadFile(*manifestFile); err != nil {
			return err
		}
		if _, err := manifest.Parse(msg); err != nil {
			return err
		}
		target = *manifestFile
	case *statement != "":
		if msg, err = os.ReadFile(*statement); err != nil {
			return err
		}
		msg = []byte(strings.TrimSuffix(string(msg), "\n"))
		if _, err := verify.ParseTrustSet(msg); err != nil {
			return err
		}
		target = *statement
	default:
		if *imageFile == "" {
			return usageError{"firmware sign needs --manifest, --statement, or --image with the manifest fields"}
		}
		m, err := buildManifest(*imageFile, *name, *version, *sv, *models, *expires, pcrs)
		if err != nil {
			return err
		}
		if msg, err = m.Marshal(); err != nil {
			return usageError{err.Error()}
		}
		target = *manifestOut
		if target == "" {
			target = *imageFile + ".manifest.json"
		}
		if err := os.WriteFile(target, msg, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "manifest %s: %s %s, security version %d, %d bytes, sha256 %x\n", target, m.Name, m.Version, m.SecurityVersion, m.Size, m.SHA256)
	}
	bundle, err := signer.Sign(msg)
	if err != nil {
		return err
	}
	out := *bundleOut
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
func buildManifest(imageFile, name, version string, sv uint64, models string, expires time.Duration, pcrs []string) (*manifest.Manifest, error) {
	f, err := os.Open(imageFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, err
	}
	m := &manifest.Manifest{Name: name, Version: version, SecurityVersion: sv, Size: n,
		Expires: time.Now().Add(expires).UTC().Truncate(time.Second)}
	copy(m.SHA256[:], h.Sum(nil))
	for _, s := range strings.Split(models, ",") {
		if s = strings.TrimSpace(s); s != "" {
			m.Models = append(m.Models, s)
		}
	}
	for _, p := range pcrs {
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
	if err := m.Validate(); err != nil {
		return nil, usageError{err.Error()}
	}
	return m, nil
}

// cmdCampaigns: sigil campaigns create | start | pause | resume | abort |
// rollback | list | show | devices.
func cmdCampaigns(ctx context.Context, args []string, stdout io.Writer) error {
	sub, args := subcommand(args, "list")
	fs := flag.NewFlagSet("campaigns "+sub, flag.ContinueOnError)
	af := addAPIFlags(fs)
	defFile := fs.String("definition", "", "campaign definition as JSON (create, rollback); flags below override its fields")
	release := fs.String("release", "", "release ID to install (create, rollback)")
	name := fs.String("name", "", "campaign name (create)")
	group := fs.String("group", "", "target: devices of this group (create)")
	model := fs.String("model", "", "target: devices of this model (create)")
	devices := fs.String("devices", "", "target: comma-separated device IDs (create)")
	tags := fs.String("tags", "", "target: devices carrying every one of these comma-separated tags (create)")
	canary := fs.Int("canary", 0, "size of the first wave (default 1)")
	growth := fs.Float64("growth", 0, "each wave's size times this gives the next (default 2)")
	sizes := fs.String("sizes", "", "explicit comma-separated wave sizes instead of --canary/--growth")
	success := fs.Float64("success", 0, "fraction of a wave that must commit before the next opens (default 1)")
	failure := fs.Float64("failure", -1, "fraction of a wave that may fail before --on-failure (default 0: any failure)")
	onFailure := fs.String("on-failure", "", "pause (default) or abort")
	timeout := fs.Duration("timeout", 0, "per-device timeout (default 1h)")
	retries := fs.Int("retries", -1, "announce a silent device again this many times (default 0)")
	maxInFlight := fs.Int("max-in-flight", 0, "most devices in flight at once (default no bound)")
	at := fs.String("at", "", "start time, RFC 3339 (start; default now)")
	step := fs.String("step", "", "only devices at this step (devices)")
	wave := fs.Int("wave", 0, "only devices of this wave (devices)")
	after := fs.String("after", "", "page after this device ID (devices)")
	limit := fs.Int("limit", 0, "devices per page (devices; default 100)")
	var id string
	if sub != "list" && sub != "create" {
		var err error
		if id, args, err = positional(args, "campaigns "+sub+" needs a campaign ID"); err != nil {
			return err
		}
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	definition := func() (campaign.Definition, error) {
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
	c, err := af.client()
	if err != nil {
		return err
	}
	printCampaign := func(cm *campaign.Campaign) error {
		if *af.output == "json" {
			return printJSON(stdout, cm)
		}
		fmt.Fprintf(stdout, "campaign %s (%s): %s, release %s, %d devices\n", cm.ID, cm.Definition.Name, cm.State, cm.Definition.Release, cm.Total)
		if cm.Why != "" {
			fmt.Fprintf(stdout, "  last change by %s: %s\n", cm.ChangedBy, cm.Why)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  WAVE\tSIZE\tNEED\tMAX FAIL\tIN FLIGHT\tCOMMITTED\tFAILED\tROLLED BACK\tTIMED OUT\tTRIPPED")
		for _, w := range cm.Waves {
			k := w.Counts
			fmt.Fprintf(tw, "  %d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%v\n", w.Number, w.Size, w.Need, w.MaxFailures, k.InFlight(),
				k.Committed, k.Failed, k.RolledBack, k.TimedOut, w.Tripped)
		}
		return tw.Flush()
	}
	var cm *campaign.Campaign
	switch sub {
	case "create", "rollback":
		d, err := definition()
		if err != nil {
			return err
		}
		if sub == "create" {
			cm, err = c.CreateCampaign(ctx, d, *af.justification)
		} else {
			cm, err = c.RollbackCampaign(ctx, id, d, *af.justification)
		}
		if err != nil {
			return err
		}
	case "start", "pause", "resume", "abort":
		var when time.Time
		if *at != "" {
			if when, err = time.Parse(time.RFC3339, *at); err != nil {
				return usageError{"--at: " + err.Error()}
			}
		}
		if cm, err = c.CampaignAction(ctx, id, sub, *af.justification, when); err != nil {
			return err
		}
	case "show":
		if cm, err = c.Campaign(ctx, id); err != nil {
			return err
		}
	case "list":
		l, err := c.Campaigns(ctx)
		if err != nil {
			return err
		}
		return af.table(stdout, l, "ID\tNAME\tSTATE\tRELEASE\tWAVE\tDEVICES\tCOMMITTED\tFAILED\tIN FLIGHT", func(tw io.Writer) {
			for _, x := range l.Campaigns {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", x.ID, x.Definition.Name, x.State, x.Definition.Release, x.Wave,
					x.Total, x.Counts.Committed, x.Counts.Failures(), x.Counts.InFlight())
			}
		})
	case "devices":
		page, err := c.CampaignDevices(ctx, id, campaign.DeviceFilter{Step: campaign.Step(*step), Wave: *wave, After: *after, Limit: *limit})
		if err != nil {
			return err
		}
		if *af.output == "json" {
			return printJSON(stdout, page)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tWAVE\tSTEP\tREASON\tRUNNING\tATTEMPTS\tUPDATED")
		for _, d := range page.Devices {
			reason := ""
			if d.Reason != 0 {
				reason = d.Reason.String()
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.Wave, d.Step, reason, d.RunningVersion, d.Attempts, d.Updated.Format(time.RFC3339))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if page.Next != "" {
			fmt.Fprintf(stdout, "more: --after %s\n", page.Next)
		}
		return nil
	default:
		return usageError{"unknown campaigns subcommand " + sub}
	}
	return printCampaign(cm)
}
