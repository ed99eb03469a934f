package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/sigil-iot/sigil/fleet/approval"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/secrets"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Secrets is the sealed-secrets service as the API uses it
// (secrets.Service). No method returns a value.
type Secrets interface {
	// Put stores value as a new version of name and starts delivering it
	// to the targeted devices that are connected.
	Put(name string, value []byte, target secrets.Target, pcrBound bool) (*secrets.Info, error)
	// List returns every secret with its delivery summary.
	List() ([]SecretStatus, error)
	// Delete removes every version of name (secrets.ErrNotFound when none):
	// the fleet stops delivering it; devices keep what they imported.
	Delete(name string) error
	// DeviceSecrets returns a device's delivery state per secret.
	DeviceSecrets(deviceID string) ([]DeviceSecret, error)
	// SetRotation sets (nil clears) the secret's rotation schedule.
	SetRotation(name string, r *secrets.Rotation) error
	// Rotate stores a new random version now (the secret needs a schedule,
	// which says how to generate it) and starts delivering it.
	Rotate(name string) (*secrets.Info, error)
}

// SecretStatus is a secret in GET /api/v1/secrets (secrets.Status).
type SecretStatus = secrets.Status

// DeliverySummary counts the devices the fleet tried to deliver a
// secret's latest version to (secrets.DeliverySummary).
type DeliverySummary = secrets.DeliverySummary

// DeviceSecret is one device's delivery state of one secret
// (secrets.DeviceStatus).
type DeviceSecret = secrets.DeviceStatus

// SecretRequest is the body of PUT /api/v1/secrets/{name}. The value is
// always base64 (standard alphabet, padded), so that any bytes can be
// stored; it is never echoed.
type SecretRequest struct {
	ValueB64 string         `json:"value_b64"`
	Target   secrets.Target `json:"target"`
	PCRBound bool           `json:"pcr_bound"`
	// Rotation, when set, schedules new random versions (see
	// secrets.Rotation); the first version is ValueB64, or a generated one
	// when ValueB64 is empty.
	Rotation *secrets.Rotation `json:"rotation,omitempty"`
}

func (h *handler) routesSecrets() {
	h.route("GET /api/v1/secrets", auth.PermSecretsRead, h.listSecrets)
	h.dangerous("PUT /api/v1/secrets/{name}", auth.PermSecretsWrite, approval.KindSecretChange, h.putSecret)
	h.dangerous("DELETE /api/v1/secrets/{name}", auth.PermSecretsWrite, approval.KindSecretChange, h.deleteSecret)
	h.dangerous("PUT /api/v1/secrets/{name}/rotation", auth.PermSecretsWrite, approval.KindSecretChange, h.putSecretRotation)
	h.dangerous("DELETE /api/v1/secrets/{name}/rotation", auth.PermSecretsWrite, approval.KindSecretChange, h.putSecretRotation)
	h.dangerous("POST /api/v1/secrets/{name}/rotate", auth.PermSecretsWrite, approval.KindSecretChange, h.rotateSecret)
	h.route("GET /api/v1/devices/{id}/secrets", auth.PermSecretsRead, h.deviceSecrets)
}

// secretsOn writes a 501 when no secrets service is configured.
func (h *handler) secretsOn(w http.ResponseWriter) bool {
	if h.cfg.Secrets == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "sealed secrets are not enabled on this server")
		return false
	}
	return true
}

func (h *handler) putSecret(w http.ResponseWriter, r *http.Request, who string) {
	if !h.secretsOn(w) {
		return
	}
	name := r.PathValue("name")
	if !wire.ValidID(name) {
		problem(w, http.StatusBadRequest, "bad request", "a secret name is 1 to 64 characters of a-z, 0-9, '.', '_' and '-', not starting with '.' or '-'")
		return
	}
	var req SecretRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Rotation != nil {
		if err := req.Rotation.Validate(); err != nil {
			problem(w, http.StatusBadRequest, "bad request", "rotation: "+err.Error())
			return
		}
	}
	value, err := base64.StdEncoding.DecodeString(req.ValueB64)
	if err != nil {
		problem(w, http.StatusBadRequest, "bad request", "value_b64 is not standard base64")
		return
	}
	if len(value) == 0 && req.Rotation != nil {
		if value, err = req.Rotation.Generate(rand.Reader); err != nil {
			problem(w, http.StatusInternalServerError, "internal error", "generating the first value failed")
			return
		}
	}
	defer clear(value)
	if len(value) == 0 || len(value) > secrets.MaxValue {
		problem(w, http.StatusBadRequest, "bad request", fmt.Sprintf("the value must be 1 to %d bytes (a TPM sealed data object), got %d", secrets.MaxValue, len(value)))
		return
	}
	t := req.Target
	if t == (secrets.Target{}) {
		problem(w, http.StatusBadRequest, "bad request", "target must name a device, group or model")
		return
	}
	for field, v := range map[string]string{"device": t.Device, "group": t.Group, "model": t.Model} {
		if v != "" && !wire.ValidID(v) {
			problem(w, http.StatusBadRequest, "bad request", "target."+field+" must be 1 to 64 characters of a-z, 0-9, '.', '_' and '-'")
			return
		}
	}
	info, err := h.cfg.Secrets.Put(name, value, t, req.PCRBound)
	if err != nil {
		h.internal(w, err)
		return
	}
	if req.Rotation != nil {
		if err := h.cfg.Secrets.SetRotation(name, req.Rotation); err != nil {
			h.internal(w, err)
			return
		}
	}
	h.log.Info("secret stored", "name", name, "version", info.Version, "pcr_bound", req.PCRBound, "rotating", req.Rotation != nil, "by", who)
	writeJSON(w, http.StatusCreated, info)
}

// putSecretRotation is PUT (a secrets.Rotation body) or DELETE
// /api/v1/secrets/{name}/rotation.
func (h *handler) putSecretRotation(w http.ResponseWriter, r *http.Request, who string) {
	if !h.secretsOn(w) {
		return
	}
	name := r.PathValue("name")
	var rot *secrets.Rotation
	if r.Method == http.MethodPut {
		rot = new(secrets.Rotation)
		if !decode(w, r, rot) {
			return
		}
		if err := rot.Validate(); err != nil {
			problem(w, http.StatusBadRequest, "bad request", err.Error())
			return
		}
	}
	err := h.cfg.Secrets.SetRotation(name, rot)
	if errors.Is(err, secrets.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no secret with that name")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	h.log.Info("secret rotation schedule set", "name", name, "cleared", rot == nil, "by", who)
	w.WriteHeader(http.StatusNoContent)
}

// rotateSecret is POST /api/v1/secrets/{name}/rotate: a new random version
// now, as the secret's schedule generates them.
func (h *handler) rotateSecret(w http.ResponseWriter, r *http.Request, who string) {
	if !h.secretsOn(w) {
		return
	}
	name := r.PathValue("name")
	info, err := h.cfg.Secrets.Rotate(name)
	switch {
	case errors.Is(err, secrets.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", "no secret with that name")
		return
	case err != nil && strings.Contains(err.Error(), "no rotation schedule"):
		problem(w, http.StatusConflict, "conflict", "the secret has no rotation schedule to generate a value with")
		return
	case err != nil:
		h.internal(w, err)
		return
	}
	h.log.Info("secret rotated", "name", name, "version", info.Version, "by", who)
	writeJSON(w, http.StatusCreated, info)
}

// SetSecretRotation sets (nil clears) a secret's rotation schedule.
func (c *Client) SetSecretRotation(ctx context.Context, name string, r *secrets.Rotation) error {
	if r == nil {
		return c.Do(ctx, http.MethodDelete, "/api/v1/secrets/"+url.PathEscape(name)+"/rotation", nil, nil)
	}
	return c.Do(ctx, http.MethodPut, "/api/v1/secrets/"+url.PathEscape(name)+"/rotation", r, nil)
}

// RotateSecret stores a new random version of a scheduled secret now.
func (c *Client) RotateSecret(ctx context.Context, name string) (*secrets.Info, error) {
	var info secrets.Info
	return &info, c.Do(ctx, http.MethodPost, "/api/v1/secrets/"+url.PathEscape(name)+"/rotate", struct{}{}, &info)
}

func (h *handler) listSecrets(w http.ResponseWriter, _ *http.Request, _ string) {
	if !h.secretsOn(w) {
		return
	}
	l, err := h.cfg.Secrets.List()
	if err != nil {
		h.internal(w, err)
		return
	}
	if l == nil {
		l = []SecretStatus{}
	}
	writeJSON(w, http.StatusOK, SecretList{Secrets: l})
}

func (h *handler) deleteSecret(w http.ResponseWriter, r *http.Request, who string) {
	if !h.secretsOn(w) {
		return
	}
	name := r.PathValue("name")
	err := h.cfg.Secrets.Delete(name)
	if errors.Is(err, secrets.ErrNotFound) {
		problem(w, http.StatusNotFound, "not found", "no secret with that name")
		return
	}
	if err != nil {
		h.internal(w, err)
		return
	}
	h.log.Info("secret deleted", "name", name, "by", who)
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) deviceSecrets(w http.ResponseWriter, r *http.Request, _ string) {
	if !h.secretsOn(w) {
		return
	}
	d, ok := h.device(w, r)
	if !ok {
		return
	}
	l, err := h.cfg.Secrets.DeviceSecrets(d.ID)
	if err != nil {
		h.internal(w, err)
		return
	}
	if l == nil {
		l = []DeviceSecret{}
	}
	writeJSON(w, http.StatusOK, DeviceSecretList{DeviceID: d.ID, Secrets: l})
}

// SecretList is GET /api/v1/secrets.
type SecretList struct {
	Secrets []SecretStatus `json:"secrets"`
}

// DeviceSecretList is GET /api/v1/devices/{id}/secrets.
type DeviceSecretList struct {
	DeviceID string         `json:"device_id"`
	Secrets  []DeviceSecret `json:"secrets"`
}

// PutSecret stores a new version of a secret; the value is sent base64.
func (c *Client) PutSecret(ctx context.Context, name string, value []byte, target secrets.Target, pcrBound bool) (*secrets.Info, error) {
	var out secrets.Info
	req := SecretRequest{ValueB64: base64.StdEncoding.EncodeToString(value), Target: target, PCRBound: pcrBound}
	return &out, c.Do(ctx, http.MethodPut, "/api/v1/secrets/"+url.PathEscape(name), req, &out)
}

// Secrets lists the secrets with their delivery summaries.
func (c *Client) Secrets(ctx context.Context) (*SecretList, error) {
	var out SecretList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/secrets", nil, &out)
}

// DeleteSecret deletes every version of a secret.
func (c *Client) DeleteSecret(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/secrets/"+url.PathEscape(name), nil, nil)
}

// DeviceSecrets returns a device's delivery state per secret.
func (c *Client) DeviceSecrets(ctx context.Context, id string) (*DeviceSecretList, error) {
	var out DeviceSecretList
	return &out, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/secrets", nil, &out)
}
