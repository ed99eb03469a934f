package api

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/ca"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// Media types of a PEM certificate chain: RFC 8555's, and the common
// unregistered one. GET /api/v1/devices/{id}/certificate answers with the
// one the client asked for.
const (
	mediaPEMChain = "application/pem-certificate-chain"
	mediaPEMFile  = "application/x-pem-file"
)

// DeviceCertificate is GET /api/v1/devices/{id}/certificate: the device's
// current certificate, an X509-SVID, and the CA generation that issued it.
type DeviceCertificate struct {
	DeviceID string `json:"device_id"`
	// SPIFFEID is the certificate's URI SAN, the device's SPIFFE ID.
	SPIFFEID  string    `json:"spiffe_id"`
	Serial    string    `json:"serial"` // hex, as in the inventory
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Revoked: the fleet revoked it (the broker refuses it, the CRL
	// lists it).
	Revoked bool `json:"revoked"`
	// Issuer is the CA generation that issued it; its state says whether
	// the fleet still trusts it.
	Issuer ca.Generation `json:"issuer"`
	// CertificatePEM is the certificate; ChainPEM the certificate followed
	// by the root certificate of its issuing generation.
	CertificatePEM string `json:"certificate_pem"`
	ChainPEM       string `json:"chain_pem"`
}

func (h *handler) routesDeviceCert() {
	h.route("GET /api/v1/devices/{id}/certificate", auth.PermDevicesRead, h.deviceCertificate)
	h.describe("GET /api/v1/devices/{id}/certificate", "A device's current certificate (an X509-SVID) with its SPIFFE ID and chain; "+
		"PEM chain with ?format=pem or Accept: "+mediaPEMChain, nil, DeviceCertificate{})
	h.alsoServes("GET /api/v1/devices/{id}/certificate", mediaPEMChain)
}

// deviceCertificate serves DeviceCertificate as JSON, or the chain as PEM
// for ?format=pem or an Accept header that names a PEM chain type.
func (h *handler) deviceCertificate(w http.ResponseWriter, r *http.Request, _ string) {
	pemType := ""
	switch r.URL.Query().Get("format") {
	case "":
		pemType = acceptsPEM(r.Header.Get("Accept"))
	case "json":
	case "pem":
		pemType = mediaPEMChain
	default:
		problem(w, http.StatusBadRequest, "bad request", "format must be json or pem")
		return
	}
	if h.cfg.CA == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "no CA configured")
		return
	}
	d, err := h.cfg.Inventory.Device(r.Context(), r.PathValue("id"))
	if errors.Is(err, inventory.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no device with that ID")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	switch {
	case d.CertSerial == "":
		problem(w, http.StatusNotFound, "not found", "the device has no certificate")
		return
	case len(d.CertDER) == 0:
		problem(w, http.StatusNotFound, "not found", "the fleet did not keep this certificate (issued before it kept them); "+
			"it keeps the next one: after the device's next renewal, or at once with sigil devices rotate "+d.ID)
		return
	}
	cert, err := x509.ParseCertificate(d.CertDER)
	if err != nil {
		h.internal(w, fmt.Errorf("api: device %s: stored certificate: %w", d.ID, err))
		return
	}
	root, gen, err := h.cfg.CA.IssuerCertificate(cert)
	if err != nil {
		h.internal(w, fmt.Errorf("api: device %s: certificate %s: %w", d.ID, d.CertSerial, err))
		return
	}
	leaf := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	chain := leaf + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}))
	if pemType != "" {
		w.Header().Set("Content-Type", pemType)
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, chain)
		return
	}
	v := DeviceCertificate{
		DeviceID: d.ID, Serial: d.CertSerial, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
		Revoked: d.IsRevoked(d.CertSerial), Issuer: gen, CertificatePEM: leaf, ChainPEM: chain,
	}
	if len(cert.URIs) == 1 {
		v.SPIFFEID = cert.URIs[0].String()
	}
	writeJSON(w, http.StatusOK, v)
}

// acceptsPEM returns the PEM chain media type an Accept header names
// (with a quality above 0), "" for none.
func acceptsPEM(accept string) string {
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || (mt != mediaPEMChain && mt != mediaPEMFile) {
			continue
		}
		if q := params["q"]; q != "" && strings.Trim(q, "0.") == "" {
			continue // q=0: not acceptable
		}
		return mt
	}
	return ""
}

// DeviceCertificate fetches a device's current certificate and its chain.
func (c *Client) DeviceCertificate(ctx context.Context, id string) (*DeviceCertificate, error) {
	var v DeviceCertificate
	return &v, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/certificate", nil, &v)
}
