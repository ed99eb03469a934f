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
// Failed logins are throttled per user name and per source address: each
// failure doubles the wait before the next attempt, and enough failures lock
// the name (or the address) out for a period. Unknown user names are
// throttled, hashed and answered exactly like known ones, so the answers do
// not reveal which names exist. Throttling state lives in memory and is lost
// on restart.
//
// Service.Require wraps an http.Handler: it answers 401 or 403 as RFC 9457
// problem+json documents and hands the authenticated Principal to the
// handler through the request context (PrincipalFrom).
//
// Users, sessions and API tokens are kept in one bbolt file; every change is
// one transaction.
package auth
