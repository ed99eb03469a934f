// Package sso is the operators' single sign-on: the console logs people in
// through the company's OpenID Provider (authorization code flow with PKCE)
// and maps the provider's groups to Sigil roles (fleet/auth).
//
// A login (GET LoginPath) sends the browser to the provider with a fresh
// state, a fresh nonce and an S256 PKCE challenge. The login in progress
// (state, nonce, verifier, where to return, start time) travels in a
// 10-minute SameSite=Lax cookie, sealed (AES-GCM) so the browser can
// neither read nor forge it: any replica completes the login, and nothing
// is held for logins never finished. The callback (GET on the path of
// Config.RedirectURL) requires the state to be the cookie's, exchanges the
// code (once: the provider takes a code once) with the verifier, and
// verifies the ID token: its signature with the provider's
// published keys, issuer, audience (the client ID), expiry, access token
// hash, and nonce. The person's groups (Config.GroupsClaim) give the role
// of the first matching Config.Roles entry; none matching refuses the
// login (deny by default). The account (Config.UserClaim) is created or
// updated as an external account of the provider (auth.LoginExternal): it
// has no password, and a local account of the same name is never taken
// over.
//
// Roles follow the provider: for a signed-in operator, the first request
// after Config.RecheckEvery asks the provider again (a refresh token grant,
// then the new ID token's groups, or userinfo) before it is served. When no
// group maps to a role any more, the account is disabled and its sessions
// end, so that very request is refused, and so are its API tokens; a new
// role replaces the old. A re-check that fails (refresh refused, provider
// unreachable) ends the operator's sessions. What the provider said (its
// subject, tokens, the last check and role) is kept with the account in
// the operators' store (auth.SetExternalState), sealed with AES-GCM under a
// key derived from the client secret, so that replicas sharing the store,
// and the fleet after a restart, re-check the same way; a replica reads it
// again before a re-check, and after a refused refresh (another replica
// may have rotated the refresh token).
//
// Logging out (the console's POST /logout) ends the session and, when the
// provider advertises an end_session_endpoint, sends the browser there
// (RP-initiated logout with id_token_hint) to return to the login page.
//
// Logins, the role each was granted and from which group, role changes,
// revoked sessions and refused logins with their reasons go to the audit
// log. Public messages never carry the internal cause; no token, code,
// secret or cookie is logged.
//
// Local accounts stay as the break-glass way in; Config.PasswordLogin false
// turns password logins off (API tokens keep working).
package sso
