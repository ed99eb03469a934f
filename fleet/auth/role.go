package auth

import "slices"

// Permission names one kind of action. Routes require permissions; roles
// grant them.
type Permission string

// Permissions.
const (
	// PermDevicesRead: devices, their events, attestation history,
	// certificates and telemetry.
	PermDevicesRead Permission = "devices.read"
	// PermDevicesWrite: approve, edit, quarantine, release and decommission
	// devices; create enrollment tokens.
	PermDevicesWrite Permission = "devices.write"
	// PermRotationWrite: renew, revoke and rotate device credentials.
	PermRotationWrite Permission = "rotation.write"
	// PermPoliciesRead: attestation reference policies.
	PermPoliciesRead Permission = "policies.read"
	// PermPoliciesWrite: create and change reference policies.
	PermPoliciesWrite Permission = "policies.write"
	// PermSecretsRead: secret names, versions and targets (never values).
	PermSecretsRead Permission = "secrets.read"
	// PermSecretsWrite: create, change and delete secrets.
	PermSecretsWrite Permission = "secrets.write"
	// PermFirmwareRead: firmware images and campaigns.
	PermFirmwareRead Permission = "firmware.read"
	// PermFirmwareWrite: upload firmware; create, pause, abort and roll back
	// campaigns.
	PermFirmwareWrite Permission = "firmware.write"
	// PermFirmwareApprove: approve a firmware release.
	PermFirmwareApprove Permission = "firmware.approve"
	// PermAlertsRead: alerts and alert sinks.
	PermAlertsRead Permission = "alerts.read"
	// PermAlertsWrite: acknowledge and resolve alerts; configure sinks.
	PermAlertsWrite Permission = "alerts.write"
	// PermAuditRead: browse, export and verify the audit log.
	PermAuditRead Permission = "audit.read"
	// PermApprovalsRead: the approvals inbox and its history.
	PermApprovalsRead Permission = "approvals.read"
	// PermSecurityApprove: approve dangerous security changes (mass
	// revocation or rotation, CA rotation, policy and secret changes).
	PermSecurityApprove Permission = "security.approve"
	// PermCAAdmin: request a rotation of the fleet CA.
	PermCAAdmin Permission = "ca.admin"
	// PermUsersAdmin: manage users, their roles and other users' API tokens.
	PermUsersAdmin Permission = "users.admin"
	// PermBrokersSync: wait for the fleet's next CRL in the slots kept for
	// the brokers' syncs (GET /crl?after=N with a token; `sigil
	// broker-sync --token-file`).
	PermBrokersSync Permission = "brokers.sync"
	// PermWorkloadsRead: workload registrations.
	PermWorkloadsRead Permission = "workloads.read"
	// PermWorkloadsWrite: create, change and delete workload
	// registrations; rotate the JWT-SVID signing key.
	PermWorkloadsWrite Permission = "workloads.write"
	// PermAccessRequest: request just-in-time SSH access to devices, list
	// and revoke one's own grants.
	PermAccessRequest Permission = "access.request"
	// PermAccessApprove: approve, deny or revoke others' SSH access grants
	// and list every grant.
	PermAccessApprove Permission = "access.approve"
	// PermBackupRead: take a backup of the running fleet (POST
	// /api/v1/backup): every store and the key material, encrypted to a
	// recipient the caller names, so as strong as holding the CA key.
	// The admin's alone.
	PermBackupRead Permission = "backup.read"
	// PermBridgesRead: the OT bridges (plant brokers) and their
	// credentials.
	PermBridgesRead Permission = "bridges.read"
	// PermBridgesWrite: issue and revoke OT bridge credentials.
	PermBridgesWrite Permission = "bridges.write"
)

// Permissions returns every permission, in a stable order.
func Permissions() []Permission {
	return []Permission{
		PermDevicesRead, PermDevicesWrite, PermRotationWrite,
		PermPoliciesRead, PermPoliciesWrite,
		PermSecretsRead, PermSecretsWrite,
		PermFirmwareRead, PermFirmwareWrite, PermFirmwareApprove,
		PermAlertsRead, PermAlertsWrite,
		PermAuditRead, PermApprovalsRead,
		PermSecurityApprove, PermCAAdmin, PermUsersAdmin, PermBrokersSync,
		PermWorkloadsRead, PermWorkloadsWrite,
		PermAccessRequest, PermAccessApprove,
		PermBackupRead,
		PermBridgesRead, PermBridgesWrite,
	}
}

// Role is a named set of permissions.
type Role string

// Roles, from least to most powerful. Every role but RoleBrokerSync
// holds the viewer's permissions.
const (
	// RoleViewer reads devices, policies, secret names, firmware, alerts,
	// approvals and OT bridges; it changes nothing.
	RoleViewer Role = "viewer"
	// RoleOperator runs the fleet day to day: devices, credential rotation,
	// firmware campaigns, alerts.
	RoleOperator Role = "operator"
	// RoleReleaseApprover approves firmware releases that someone else
	// requested.
	RoleReleaseApprover Role = "release-approver"
	// RoleSecurityAdmin owns trust: policies, secrets, the CA, workload
	// registrations, OT bridge credentials, the audit log, and approves
	// the dangerous security changes.
	RoleSecurityAdmin Role = "security-admin"
	// RoleAdmin holds every permission, including user management.
	RoleAdmin Role = "admin"
	// RoleBrokerSync is a broker sync's: PermBrokersSync and nothing else
	// (not even the viewer's), the scope of the API token `sigil
	// broker-sync` presents.
	RoleBrokerSync Role = "broker-sync"
)

// Roles returns every role, from least to most powerful, the broker
// sync's (which holds one permission no other role but the admin's
// holds) second.
func Roles() []Role {
	return []Role{RoleViewer, RoleBrokerSync, RoleOperator, RoleReleaseApprover, RoleSecurityAdmin, RoleAdmin}
}

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return slices.Contains(Roles(), r) }

// Permissions returns the permissions r grants (none for an unknown role),
// in the order of Permissions.
func (r Role) Permissions() []Permission {
	viewer := []Permission{PermDevicesRead, PermPoliciesRead, PermSecretsRead, PermFirmwareRead, PermAlertsRead, PermApprovalsRead, PermWorkloadsRead, PermBridgesRead}
	var extra []Permission
	switch r {
	case RoleBrokerSync:
		return []Permission{PermBrokersSync}
	case RoleViewer:
	case RoleOperator:
		extra = []Permission{PermDevicesWrite, PermRotationWrite, PermFirmwareWrite, PermAlertsWrite, PermAccessRequest}
	case RoleReleaseApprover:
		extra = []Permission{PermFirmwareApprove}
	case RoleSecurityAdmin:
		extra = []Permission{PermDevicesWrite, PermRotationWrite, PermPoliciesWrite, PermSecretsWrite,
			PermAlertsWrite, PermAuditRead, PermSecurityApprove, PermCAAdmin, PermWorkloadsWrite, PermAccessRequest, PermAccessApprove, PermBridgesWrite}
	case RoleAdmin:
		return Permissions()
	default:
		return nil
	}
	var out []Permission
	for _, p := range Permissions() {
		if slices.Contains(viewer, p) || slices.Contains(extra, p) {
			out = append(out, p)
		}
	}
	return out
}

// Has reports whether r grants p.
func (r Role) Has(p Permission) bool { return slices.Contains(r.Permissions(), p) }

// Covers reports whether r grants every permission other grants: a user
// may only hand out (to an API token) a role that their own covers.
func (r Role) Covers(other Role) bool {
	if !r.Valid() || !other.Valid() {
		return false
	}
	for _, p := range other.Permissions() {
		if !r.Has(p) {
			return false
		}
	}
	return true
}
