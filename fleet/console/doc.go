// Package console is the operators' web console: server-rendered HTML
// pages, served by `sigil serve` on the API's HTTPS listener, with every
// asset embedded (no CDN, works offline) and no inline script.
//
// # Reading and changing
//
// Pages read the fleet's stores directly through small interfaces
// (Inventory, Attestations, Policies, ...) and show only what the
// operator's role may read, with the same permissions as the API's read
// routes.
//
// Every change goes through the JSON API. An Action is an HTML form the
// console turns into the JSON request of one API route and runs through the
// API handler in-process, carrying the browser's session cookie and the
// form's CSRF token: the API's authentication, CSRF and permission checks,
// input validation and audit records apply exactly as they do to a script.
// A button is shown only to operators whose role holds the permission of
// the API route it calls; a role without it that posts anyway gets the
// API's 403. Secrets the API shows once (enrollment tokens, API tokens,
// generated passwords) are shown once on the answer page and never put in
// a URL.
//
// # Security
//
// Every response carries a strict Content-Security-Policy (no inline
// script or style), HSTS, X-Frame-Options DENY, nosniff and no referrer.
// Pages need a session (a browser without one is sent to /login);
// state-changing forms carry the session's CSRF token.
//
// # Adding a page
//
// Pages plug in without touching this package's other files:
//
//   - a page of its own: a Page value (path, menu label, the permission to
//     see it, an html/template source defining "content", a Load function
//     over the subsystem's small interface, and its Actions) in
//     Config.Pages;
//   - a tile on the overview: a CardFunc in Config.Cards (open alerts,
//     campaign progress);
//   - a section of the device page: a Section in Config.DeviceSections
//     (telemetry charts, firmware history, risk breakdown, audit trail).
//
// The built-in pages are made the same way (pages.go). A subsystem's
// pages, tiles and sections travel together as an Extension, which
// Config.With adds; FirmwarePages (campaigns and releases), AlertPages,
// ApprovalPages, AuditPages, TelemetryCharts and RiskPages each make one
// over the small interface they read, and a nil reader makes none.
package console
