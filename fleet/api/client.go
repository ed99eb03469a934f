package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-iot/sigil/fleet/attest"
	"github.com/sigil-iot/sigil/fleet/policy"
)

// Client calls the API; the CLI, the demo and tests use it.
type Client struct {
	BaseURL string // e.g. https://localhost:8443
	Token   string
	// Justification is sent with every request; the dangerous routes need
	// it when the two-person rule is on.
	Justification string
	HTTP          *http.Client
}

// NewClient returns a client trusting the given CA pool.
func NewClient(baseURL, token string, roots *x509.CertPool) *Client {
	return &Client{BaseURL: baseURL, Token: token, HTTP: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
	}}
}

// PendingError is returned by Do when the server filed the call for a
// second person's approval (202) instead of acting.
type PendingError struct{ Pending Pending }

func (e *PendingError) Error() string {
	return fmt.Sprintf("api: filed for approval as request %s (%s); another person must approve it", e.Pending.Approval.ID, e.Pending.Approval.Kind)
}

// StatusError is a non-2xx answer with its problem document.
type StatusError struct {
	Status  int
	Problem Problem
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("api: %d %s: %s", e.Status, e.Problem.Title, e.Problem.Detail)
}

// Do sends a request with a JSON body (nil for none) and decodes the JSON
// answer into out (nil to discard).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if c.Justification != "" {
		req.Header.Set(JustificationHeader, c.Justification)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusAccepted {
		pe := &PendingError{}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&pe.Pending); err == nil && pe.Pending.Approval.ID != "" {
			return pe
		}
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Status: resp.StatusCode}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&se.Problem)
		return se
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// DeviceList is GET /api/v1/devices.
type DeviceList struct {
	Devices []Device `json:"devices"`
	Next    string   `json:"next,omitempty"`
}

// Devices lists devices, optionally filtered by state.
func (c *Client) Devices(ctx context.Context, state string) (*DeviceList, error) {
	q := url.Values{}
	if state != "" {
		q.Set("state", state)
	}
	var out DeviceList
	path := "/api/v1/devices"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return &out, c.Do(ctx, http.MethodGet, path, nil, &out)
}

// DeviceDetail is GET /api/v1/devices/{id}.
type DeviceDetail struct {
	Device
	Events []Event `json:"events"`
}

// Device fetches one device.
func (c *Client) Device(ctx context.Context, id string) (*DeviceDetail, error) {
	var out DeviceDetail
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id), nil, &out)
}

// CreateToken creates an enrollment token that grants model ("" for none).
func (c *Client) CreateToken(ctx context.Context, model, owner string, ttl time.Duration) (*TokenResponse, error) {
	req := EnrollmentTokenRequest{Model: model, Owner: owner}
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	return c.CreateEnrollmentToken(ctx, req)
}

// CreateEnrollmentToken creates an enrollment token as req says.
func (c *Client) CreateEnrollmentToken(ctx context.Context, req EnrollmentTokenRequest) (*TokenResponse, error) {
	var out TokenResponse
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/enrollment-tokens", req, &out)
}

// Approve approves a pending device.
func (c *Client) Approve(ctx context.Context, id string) (*Device, error) {
	var out Device
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/approve", nil, &out)
}

// Attest challenges a device now.
func (c *Client) Attest(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/attest", nil, nil)
}

// AttestationList is GET /api/v1/devices/{id}/attestations.
type AttestationList struct {
	DeviceID     string          `json:"device_id"`
	Attestation  string          `json:"attestation"`
	Attestations []attest.Record `json:"attestations"`
}

// Attestations returns a device's verdict history, newest first.
func (c *Client) Attestations(ctx context.Context, id string) (*AttestationList, error) {
	var out AttestationList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/attestations", nil, &out)
}

// Release returns a quarantined device to active.
func (c *Client) Release(ctx context.Context, id, justification string) (*Device, error) {
	var out Device
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/release", releaseRequest{Justification: justification}, &out)
}

// LearnRequest asks the fleet to learn a policy from a golden device.
type LearnRequest = learnRequest

// LearnPolicy learns a policy from a device's newest passing attestation.
func (c *Client) LearnPolicy(ctx context.Context, req LearnRequest) (*policy.Policy, error) {
	var out policy.Policy
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/policies/learn", req, &out)
}

// PutPolicy stores a new policy version.
func (c *Client) PutPolicy(ctx context.Context, p *policy.Policy) (*policy.Policy, error) {
	var out policy.Policy
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/policies", p, &out)
}

// Revoke revokes every certificate of a device that has not expired.
func (c *Client) Revoke(ctx context.Context, id, reason, comment string) (*Device, error) {
	var out Device
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/revoke", revokeRequest{Reason: reason, Comment: comment}, &out)
}

// Decommission retires a device.
func (c *Client) Decommission(ctx context.Context, id, comment string) (*Device, error) {
	var out Device
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/decommission", revokeRequest{Comment: comment}, &out)
}

// RotationRequest starts a forced rotation.
type RotationRequest = rotationRequest

// StartRotation starts a forced rotation job.
func (c *Client) StartRotation(ctx context.Context, req RotationRequest) (*RotationView, error) {
	var out RotationView
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/rotations", req, &out)
}

// Rotation fetches a rotation job with its progress.
func (c *Client) Rotation(ctx context.Context, id string) (*RotationView, error) {
	var out RotationView
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/rotations/"+url.PathEscape(id), nil, &out)
}

// CRL fetches the fleet's signed CRL (DER).
func (c *Client) CRL(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/crl", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &StatusError{Status: resp.StatusCode}
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

// CRLAfter waits for the fleet's CRL whose number is greater than after
// (GET /crl?after=N; nil after: the current one at once) and returns it
// (DER), or nil when the fleet held the request until its hold ended with
// none. The wait is bounded by ctx, not by c.HTTP's timeout. With a Token
// (a broker sync's, scope broker-sync) it waits in the slots the fleet
// keeps for the brokers' syncs.
func (c *Client) CRLAfter(ctx context.Context, after *big.Int) ([]byte, error) {
	return c.crlAfter(ctx, url.Values{}, after)
}

// CRLSetAfter is CRLAfter for the CRL set of a broker (GET
// /crl?set=generations): the trust bundle, the cross certificates and
// one CRL per trusted CA generation, in PEM (crl.List.Set).
func (c *Client) CRLSetAfter(ctx context.Context, after *big.Int) ([]byte, error) {
	return c.crlAfter(ctx, url.Values{"set": {"generations"}}, after)
}

func (c *Client) crlAfter(ctx context.Context, q url.Values, after *big.Int) ([]byte, error) {
	if after != nil {
		q.Set("after", after.String())
	}
	u := c.BaseURL + "/crl"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := *c.HTTP
	hc.Timeout = 0 // the fleet holds the request for up to a minute
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	case http.StatusNotModified:
		return nil, nil
	}
	return nil, &StatusError{Status: resp.StatusCode}
}
