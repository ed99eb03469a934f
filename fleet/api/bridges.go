package api

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/bridge"
)

// OT bridges (fleet/bridge): the credentials of plant MQTT brokers.
//
//	GET  /api/v1/bridges               every site's bridge and its credentials
//	GET  /api/v1/bridges/{site}        one site's
//	POST /api/v1/bridges               issue a site's credential for a CSR
//	POST /api/v1/bridges/{site}/revoke revoke it (CRL, sessions cut)
//	PUT  /api/v1/bridges/{site}/devices/{id}  assign a device to the site
//	DELETE /api/v1/bridges/{site}/devices/{id} end that assignment

// Bridges is what the API needs of the bridge store (*bridge.Service).
type Bridges interface {
	Create(ctx context.Context, by audit.Actor, site string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error)
	Revoke(ctx context.Context, by audit.Actor, site string, reason int, because string) error
	Get(ctx context.Context, site string) (*bridge.Bridge, error)
	List(ctx context.Context) ([]*bridge.Bridge, error)
	Prefix(site string) string
	Health(site string) bridge.Health
	AssignSite(ctx context.Context, by audit.Actor, deviceID, site string) error
	Site(ctx context.Context, deviceID string) (string, error)
}

var _ Bridges = (*bridge.Service)(nil)

// BridgeRequest asks for a site's bridge credential.
type BridgeRequest struct {
	Site string `json:"site"`
	// CSR is a PEM certificate request signed by the bridge's key (the
	// key never leaves the plant); only its public key is used.
	CSR string `json:"csr"`
	// Lifetime is a Go duration ("2160h"); empty means 90 days, at most
	// 397 days.
	Lifetime string `json:"lifetime,omitempty"`
}

// BridgeView is a site's bridge.
type BridgeView struct {
	bridge.Bridge
	// Prefix is the site's part of the fleet's topic tree.
	Prefix string `json:"prefix"`
	// Current is the serial of the current credential ("" when none).
	Current string `json:"current,omitempty"`
	// Health is what the fleet saw of the bridge since it started:
	// connected now, last seen, accepted and refused device messages.
	Health bridge.Health `json:"health"`
}

// DeviceSite is a device's assignment to a site's bridge.
type DeviceSite struct {
	Device string `json:"device"`
	Site   string `json:"site"` // "" when the device is assigned to none
}

// BridgeCreated is the issued credential.
type BridgeCreated struct {
	BridgeView
	Serial      string    `json:"serial"`
	NotAfter    time.Time `json:"not_after"`
	Certificate string    `json:"certificate"` // PEM
	CA          string    `json:"ca"`          // PEM trust bundle for bridge_cafile
}

// BridgeList lists the bridges.
type BridgeList struct {
	Bridges []BridgeView `json:"bridges"`
}

func (h *handler) routesBridges() {
	h.route("GET /api/v1/bridges", auth.PermBridgesRead, h.withBridges(h.listBridges))
	h.route("GET /api/v1/bridges/{site}", auth.PermBridgesRead, h.withBridges(h.getBridge))
	h.route("POST /api/v1/bridges", auth.PermBridgesWrite, h.withBridges(h.createBridge))
	h.route("POST /api/v1/bridges/{site}/revoke", auth.PermBridgesWrite, h.withBridges(h.revokeBridge))
	h.route("PUT /api/v1/bridges/{site}/devices/{id}", auth.PermBridgesWrite, h.withBridges(h.assignSite))
	h.route("DELETE /api/v1/bridges/{site}/devices/{id}", auth.PermBridgesWrite, h.withBridges(h.assignSite))
	h.describe("PUT /api/v1/bridges/{site}/devices/{id}", "Assign a device to a site: the fleet accepts its bridged messages only through that site's bridge", nil, DeviceSite{})
	h.describe("DELETE /api/v1/bridges/{site}/devices/{id}", "End a device's assignment to a site (its bridged messages are refused)", nil, DeviceSite{})
	h.describe("GET /api/v1/bridges", "List the OT bridges (plant brokers) and their credentials", nil, BridgeList{})
	h.describe("GET /api/v1/bridges/{site}", "A site's OT bridge and its credentials", nil, BridgeView{})
	h.describe("POST /api/v1/bridges", "Issue a site's bridge credential for a CSR (refused while the site holds a current one)", BridgeRequest{}, BridgeCreated{}, 201)
	h.describe("POST /api/v1/bridges/{site}/revoke", "Revoke a site's bridge credential: into the CRL, its sessions cut at once", revokeRequest{}, BridgeView{})
}

// withBridges answers 501 when the fleet has no bridge store.
func (h *handler) withBridges(fn func(http.ResponseWriter, *http.Request, string, Bridges)) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, who string) {
		if h.cfg.Bridges == nil {
			problem(w, http.StatusNotImplemented, "not implemented", "OT bridges are not available on this fleet")
			return
		}
		fn(w, r, who, h.cfg.Bridges)
	}
}

func (h *handler) bridgeView(b *bridge.Bridge) BridgeView {
	v := BridgeView{Bridge: *b, Prefix: h.cfg.Bridges.Prefix(b.Site)}
	if c, ok := b.Current(h.cfg.Now()); ok {
		v.Current = c.Serial
	}
	v.Health = h.cfg.Bridges.Health(b.Site)
	return v
}

// assignSite assigns (PUT) or unassigns (DELETE) a device to a site: an
// operator's fact, never a device's claim. DELETE of a device assigned to
// another site is 404.
func (h *handler) assignSite(w http.ResponseWriter, r *http.Request, who string, bs Bridges) {
	site, id := r.PathValue("site"), r.PathValue("id")
	to := site
	if r.Method == http.MethodDelete {
		cur, err := bs.Site(r.Context(), id)
		if err != nil {
			h.internal(w, err)
			return
		}
		if cur != site {
			problem(w, http.StatusNotFound, "not found", "the device is not assigned to this site")
			return
		}
		to = ""
	} else if _, err := bs.Get(r.Context(), site); errors.Is(err, bridge.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no bridge for this site")
		return
	}
	err := bs.AssignSite(r.Context(), audit.User(who), id, to)
	if errors.Is(err, bridge.ErrInvalid) {
		problem(w, http.StatusBadRequest, "bad request", "invalid device ID or site")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, DeviceSite{Device: id, Site: to})
}

func (h *handler) listBridges(w http.ResponseWriter, r *http.Request, _ string, bs Bridges) {
	all, err := bs.List(r.Context())
	if err != nil {
		h.internal(w, err)
		return
	}
	out := BridgeList{Bridges: []BridgeView{}}
	for _, b := range all {
		out.Bridges = append(out.Bridges, h.bridgeView(b))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) getBridge(w http.ResponseWriter, r *http.Request, _ string, bs Bridges) {
	b, err := bs.Get(r.Context(), r.PathValue("site"))
	if errors.Is(err, bridge.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no bridge for this site")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.bridgeView(b))
}

func (h *handler) createBridge(w http.ResponseWriter, r *http.Request, who string, bs Bridges) {
	var req BridgeRequest
	if !decode(w, r, &req) {
		return
	}
	var lifetime time.Duration
	if req.Lifetime != "" {
		var err error
		if lifetime, err = time.ParseDuration(req.Lifetime); err != nil || lifetime <= 0 {
			problem(w, http.StatusBadRequest, "bad request", "lifetime must be a positive Go duration such as 2160h")
			return
		}
	}
	block, _ := pem.Decode([]byte(req.CSR))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		problem(w, http.StatusBadRequest, "bad request", "csr must be a PEM CERTIFICATE REQUEST")
		return
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		problem(w, http.StatusBadRequest, "bad request", "csr is malformed or not signed by its key")
		return
	}
	cert, err := bs.Create(r.Context(), audit.User(who), req.Site, csr.PublicKey, lifetime)
	switch {
	case errors.Is(err, bridge.ErrExists):
		problem(w, http.StatusConflict, "conflict", "the site already holds a current bridge credential; revoke it first")
		return
	case errors.Is(err, bridge.ErrInvalid):
		problem(w, http.StatusBadRequest, "bad request", "site must be lowercase letters, digits, '.', '_' or '-' (at most 64), lifetime at most 397 days, and the key one the CA accepts")
		return
	case err != nil:
		h.internal(w, err)
		return
	}
	b, err := bs.Get(r.Context(), req.Site)
	if err != nil {
		h.internal(w, err)
		return
	}
	out := BridgeCreated{BridgeView: h.bridgeView(b), Serial: hex.EncodeToString(cert.SerialNumber.Bytes()), NotAfter: cert.NotAfter,
		Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))}
	if h.cfg.CA != nil {
		out.CA = string(h.cfg.CA.CertPEM())
	}
	writeJSON(w, http.StatusCreated, out)
}

func (h *handler) revokeBridge(w http.ResponseWriter, r *http.Request, who string, bs Bridges) {
	req, reason, ok := decodeRevoke(w, r)
	if !ok {
		return
	}
	site := r.PathValue("site")
	err := bs.Revoke(r.Context(), audit.User(who), site, reason, req.Comment)
	if errors.Is(err, bridge.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no current bridge credential for this site")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	h.crls.Changed()
	b, err := bs.Get(r.Context(), site)
	if err != nil {
		h.internal(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.bridgeView(b))
}

// Bridges lists the OT bridges.
func (c *Client) Bridges(ctx context.Context) (*BridgeList, error) {
	var out BridgeList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/bridges", nil, &out)
}

// CreateBridge issues a site's bridge credential for a PEM CSR.
func (c *Client) CreateBridge(ctx context.Context, req BridgeRequest) (*BridgeCreated, error) {
	var out BridgeCreated
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/bridges", req, &out)
}

// AssignSite assigns a device to a site's bridge (site "" unassigns it
// from from).
func (c *Client) AssignSite(ctx context.Context, deviceID, site, from string) (*DeviceSite, error) {
	var out DeviceSite
	if site == "" {
		return &out, c.Do(ctx, http.MethodDelete, "/api/v1/bridges/"+url.PathEscape(from)+"/devices/"+url.PathEscape(deviceID), nil, &out)
	}
	return &out, c.Do(ctx, http.MethodPut, "/api/v1/bridges/"+url.PathEscape(site)+"/devices/"+url.PathEscape(deviceID), nil, &out)
}

// RevokeBridge revokes a site's bridge credential.
func (c *Client) RevokeBridge(ctx context.Context, site, reason, comment string) (*BridgeView, error) {
	var out BridgeView
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/bridges/"+url.PathEscape(site)+"/revoke", revokeRequest{Reason: reason, Comment: comment}, &out)
}
