package workload

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/fleet/storage/postgres"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Options are the workload identity keys of sigil serve's configuration
// (docs/CONFIG.md); they sit at the top level of the file.
type Options struct {
	// WorkloadIssuer is the fleet's public HTTPS origin
	// (https://host[:port]): the JWT-SVIDs' "iss" and the OpenID Connect
	// issuer whose /.well-known/openid-configuration and
	// /.well-known/jwks.json clouds fetch. Default "": JWT-SVIDs carry no
	// issuer and the discovery document answers 501.
	WorkloadIssuer string `json:"workload_issuer"`
	// WorkloadX509TTL is the X.509-SVIDs' lifetime. Default 1h (1m to 24h).
	WorkloadX509TTL config.Duration `json:"workload_x509_ttl"`
	// WorkloadJWTTTL is the JWT-SVIDs' lifetime. Default 5m (1m to 1h).
	WorkloadJWTTTL config.Duration `json:"workload_jwt_ttl"`
	// WorkloadKeyRotation is how often the JWT signing key rotates.
	// Default 24h.
	WorkloadKeyRotation config.Duration `json:"workload_key_rotation"`
	// WorkloadMaxRisk, when above 0, refuses SVIDs to a device whose risk
	// score (0-100) is above it. Default 0: the risk score is not asked.
	WorkloadMaxRisk int `json:"workload_max_risk"`
}

// Scorer rates a device's risk (governance.Service).
type Scorer interface {
	Score(deviceID string) (*governance.Risk, error)
}

// Wiring is what the fleet hands Setup.
type Wiring struct {
	Options     Options
	DataDir     string       // the store's file and the secrets key that seals the signing keys
	DB          *postgres.DB // nil: the store is a bbolt file in DataDir
	CA          X509Signer
	Devices     Devices
	Verdicts    Verdicts
	TrustDomain string
	Risk        Scorer
	Audit       audit.Recorder
	Leases      Leases // nil: the key upkeep runs on every replica
	Send        func(deviceID, kind string, payload []byte) error
	Logger      *slog.Logger
	Config      func(*Config) // optional last changes (tests)
	// OnClose receives the store's Close.
	OnClose func(func() error)
}

// Setup opens the store (in DB when set, else DataDir/File) and returns the
// service over it. The signing keys are sealed with a key derived from
// the fleet's secrets key (secrets.DerivedKey), which every replica
// holds.
func Setup(w Wiring) (*Service, error) {
	kek, err := secrets.DerivedKey(w.DataDir, "workload JWT signing keys")
	if err != nil {
		return nil, err
	}
	var st *Store
	if w.DB != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		st, err = OpenPostgres(ctx, w.DB, kek)
	} else {
		st, err = Open(filepath.Join(w.DataDir, File), kek)
	}
	if err != nil {
		return nil, err
	}
	if w.OnClose != nil {
		w.OnClose(st.Close)
	}
	cfg := Config{Store: st, CA: w.CA, Devices: w.Devices, Verdicts: w.Verdicts, TrustDomain: w.TrustDomain,
		Issuer: w.Options.WorkloadIssuer, MaxRisk: w.Options.WorkloadMaxRisk, Audit: w.Audit, Send: w.Send, Logger: w.Logger, Leases: w.Leases,
		X509TTL: time.Duration(w.Options.WorkloadX509TTL), JWTTTL: time.Duration(w.Options.WorkloadJWTTTL),
		KeyRotation: time.Duration(w.Options.WorkloadKeyRotation)}
	if w.Risk != nil {
		cfg.Risk = func(id string) (int, error) {
			r, err := w.Risk.Score(id)
			if err != nil {
				return 0, err
			}
			return r.Score, nil
		}
	}
	if w.Config != nil {
		w.Config(&cfg)
	}
	return New(cfg)
}

// Open is Setup for a composition root's list of opening steps: the
// service goes to *into.
func (w Wiring) Open(into **Service) error {
	svc, err := Setup(w)
	*into = svc
	return err
}
