// Package sink delivers alert notifications (alert.Notifier) to the systems
// operators already watch:
//
//   - Alertmanager: Prometheus Alertmanager's own API, POST /api/v2/alerts,
//     the endpoint Prometheus itself uses. Point URL at the Alertmanager
//     and route TransitionRepeat to it, so that open alerts stay open there
//     (each carries an endsAt EndsAfter ahead, as Prometheus does).
//     Alertmanager then groups, silences and fans out with its own
//     receivers. (Its webhook_config payload is what Alertmanager sends
//     out, not what it accepts, so it is not offered here.)
//   - Syslog: RFC 5424 messages over TCP with octet-counting framing
//     (RFC 6587), or over TLS (RFC 5425), whose MSG is a CEF event
//     (ArcSight Common Event Format) for SIEMs.
//   - Webhook: a generic JSON POST of the notification, optionally signed
//     with HMAC-SHA256 (VerifySignature checks it on the receiving side).
//
// Errors never contain header values or secrets, and request URLs are not
// repeated in them; a response a retry cannot fix (4xx other than 408 and
// 429, a redirect) wraps alert.ErrPermanent so the route dead-letters it at
// once.
package sink
