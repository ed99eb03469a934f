package console

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/workload"
	"github.com/sigil-iot/sigil/pkg/wire"
)

// Workloads lists workload registrations and the JWT-SVID keys;
// *workload.Service implements it.
type Workloads interface {
	Registrations(ctx context.Context) ([]workload.Registration, error)
	Keys(ctx context.Context) ([]workload.KeyInfo, error)
	Issuer() string
	TrustDomain() string
}

var _ Workloads = (*workload.Service)(nil)

// WorkloadPages is the workload identities page: the registrations (the
// devices each applies to, the selectors a process must match, the SPIFFE
// ID it gets), forms to register and delete one (workloads.write), and
// the OpenID Connect issuer and JWT-SVID signing keys clouds trust.
type WorkloadPages struct {
	// Workloads is the workload service; nil makes an empty Extension.
	Workloads Workloads
}

// WorkloadPage is the workload page's data.
type WorkloadPage struct {
	Registrations []WorkloadRow
	// Issuer is the OpenID Connect issuer ("" when workload_issuer is
	// unset) and Discovery its discovery document's URL.
	Issuer, Discovery string
	Keys              []workload.KeyInfo
}

// WorkloadRow is a registration as the page shows it.
type WorkloadRow struct {
	workload.Registration
	// Selectors are the selectors in words ("uid 1000", "exe /usr/bin/x").
	Selectors []string
	// SPIFFEID is the ID the workload gets, with "<device ID>" for a
	// group or model registration.
	SPIFFEID string
}

// Extension returns the workloads page.
func (wp WorkloadPages) Extension() Extension {
	if wp.Workloads == nil {
		return Extension{}
	}
	return Extension{Pages: []Page{{Name: "workloads", Path: "/workloads", Nav: "Workloads", Title: "Workload identities",
		Perm: auth.PermWorkloadsRead, Template: source("workloads.html"), Load: wp.load, Actions: []Action{
			{Name: "workloads.register", Path: "/workloads/register", API: "PUT /api/v1/workloads/{name}", Then: "/workloads",
				Wildcards: workloadName, Body: workloadRegistration,
				OK: "Registered: devices it applies to learn it at their next request, and their matching processes get SVIDs."},
			{Name: "workloads.delete", Path: "/workloads/{name}/delete", API: "DELETE /api/v1/workloads/{name}", Then: "/workloads",
				OK: "Deleted: devices get no new SVID for it; SVIDs already issued last until they expire."},
		}}}}
}

// workloadName takes the registration's name from the form.
func workloadName(form url.Values) (map[string]string, error) {
	name := strings.TrimSpace(form.Get("name"))
	if !wire.ValidWorkloadName(name) {
		return nil, errUser("the name is 1 to 64 of a-z 0-9 . _ - (not starting with . or -)")
	}
	return map[string]string{"name": name}, nil
}

// workloadRegistration builds a registration from the form; the API
// validates it.
func workloadRegistration(form url.Values) (any, error) {
	r := workload.Registration{Name: strings.TrimSpace(form.Get("name")), Scope: workload.Scope(form.Get("scope")),
		Target: strings.TrimSpace(form.Get("target")), ExePath: strings.TrimSpace(form.Get("exe_path")),
		ExeSHA256: strings.ToLower(strings.TrimSpace(form.Get("exe_sha256")))}
	for _, f := range []struct {
		field string
		into  **uint32
	}{{"uid", &r.UID}, {"gid", &r.GID}} {
		s := strings.TrimSpace(form.Get(f.field))
		if s == "" {
			continue
		}
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, errUser("the " + f.field + " is a number (0 to 4294967295)")
		}
		v := uint32(n)
		*f.into = &v
	}
	if err := r.Validate(); err != nil {
		return nil, errUser(strings.TrimPrefix(err.Error(), workload.ErrInvalid.Error()+": "))
	}
	return r, nil
}

func (wp WorkloadPages) load(r *http.Request, _ auth.Principal) (any, error) {
	regs, err := wp.Workloads.Registrations(r.Context())
	if err != nil {
		return nil, err
	}
	keys, err := wp.Workloads.Keys(r.Context())
	if err != nil {
		return nil, err
	}
	td := wp.Workloads.TrustDomain()
	out := WorkloadPage{Issuer: wp.Workloads.Issuer(), Keys: keys}
	if out.Issuer != "" {
		out.Discovery = out.Issuer + "/.well-known/openid-configuration"
	}
	for _, reg := range regs {
		row := WorkloadRow{Registration: reg, SPIFFEID: "spiffe://" + td + "/device/<device ID>/workload/" + reg.Name}
		if reg.Scope == workload.ScopeDevice {
			row.SPIFFEID = workload.SPIFFEID(td, reg.Target, reg.Name).String()
		}
		if reg.UID != nil {
			row.Selectors = append(row.Selectors, "uid "+strconv.FormatUint(uint64(*reg.UID), 10))
		}
		if reg.GID != nil {
			row.Selectors = append(row.Selectors, "gid "+strconv.FormatUint(uint64(*reg.GID), 10))
		}
		if reg.ExePath != "" {
			row.Selectors = append(row.Selectors, "executable "+reg.ExePath)
		}
		if reg.ExeSHA256 != "" {
			row.Selectors = append(row.Selectors, "SHA-256 "+reg.ExeSHA256)
		}
		out.Registrations = append(out.Registrations, row)
	}
	return out, nil
}
