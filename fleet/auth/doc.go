// Package auth authenticates the fleet's operators and authorizes what they
// do.
//
// Operators are users with a role (RoleViewer, RoleOperator,
// RoleReleaseApprover, RoleSecurityAdmin, RoleAdmin); a role is a fixed set
// of permissions (PermDevicesRead, PermSecretsWrite, ...), and every route
// of the API and console requires one or more of them.
//
// A person proves who they are in one of two ways:
//
//   - A browser logs in with a user name and password (hashed with argon2id
//     in PHC string format; the hash is upgraded on login when the
//     configured parameters change) and receives a session cookie:
//     HttpOnly, Secure, SameSite=Strict, Path=/, with an idle and an
//     absolute expiry. Only the SHA-256 of the session ID is stored. Every
//     state-changing request made with a session must carry the session's
//     CSRF token (header X-CSRF-Token or form field csrf_token) and, when
//     the browser sends them, an Origin and Sec-Fetch-Site that say the
//     request came from the console itself.
//   - A script presents an API token as "Authorization: Bearer sga_...". A
//     token is scoped to a role no greater than its owner's and has an
//     expiry; its secret is shown once, at creation, and only its SHA-256 is
//     stored. Bearer requests are exempt from the CSRF checks: browsers never
//     attach them on their own.
//
// A person may also log in through the company's identity provider
// (single sign-on, fleet/sso): LoginExternal starts a session for an
// external account (User.External names the provider; it has no password)
// with the role the provider's groups map to, never taking over a local
// account, and SyncExternal applies what the provider says later (no role:
// the account is disabled and its sessions end). Config.NoPasswordLogin
// turns password logins off (ErrPasswordLoginOff); API tokens keep
// working.
//
// A credential never grants more than its own scope: a request's effective
// permissions are those both its credential's scope and its user's current
// role grant (Principal.Can), and the *As methods (CreateUserAs,
// ChangeUserAs, DeleteUserAs, CreateTokenAs, RevokeTokenAs,
// ActivateTokenAs) check them against every role handed out and every
// user or token acted on, in the transaction that makes the change
// (scoped.go). Service.Principal establishes a principal again from its
// Credential, as its user and token are then: an approved request runs with
// only what its requester may still do.
//
// Failed logins are throttled per user name and source address together:
// each failure doubles the wait before the next attempt from that address,
// and enough failures lock the name out from that address for a period, so
// that someone guessing elsewhere cannot lock the real person out. An
// address failing for many names is locked out for all; a name failing from
// many addresses is slowed down (one attempt per Throttle.UserDelay) from
// addresses it has not logged in from, never locked. Unknown user names are
// throttled, hashed and answered exactly like known ones, so the answers do
// not reveal which names exist. Throttling state lives in memory and is lost
// on restart. Logins, failed logins, lockouts and slow-downs go to
// Config.Audit.
//
// A person changes their own password with ChangeOwnPassword, proving the
// current one; the check is throttled on the login counters, so a stolen
// session or token cannot guess faster than a login. Every session of the
// user ends but the one the change was made with, which continues under a
// new ID; API tokens are not affected (they are revoked on their own). An
// administrator's reset (SetPassword) ends every session of the user.
//
// Service.Require wraps an http.Handler: it answers 401 or 403 as RFC 9457
// problem+json documents and hands the authenticated Principal to the
// handler through the request context (PrincipalFrom).
//
// Users, sessions and API tokens are kept in one bbolt file (Open), or in
// PostgreSQL (OpenPostgres), shared by the replicas of the fleet with the
// login throttle's counters; every change is one transaction.
package auth
