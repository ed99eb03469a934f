// Package e2e runs Sigil end to end: a fleet (embedded broker, CA,
// inventory, enrollment service, API) and sigild agents on real swtpm TPMs,
// checked with independent clients — mosquitto_pub/mosquitto_sub,
// tpm2-tools and openssl. Its tests are in the _test files.
package e2e
