package server

import (
	"net/http"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/console"
	"github.com/sigil-iot/sigil/fleet/governance"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// withConsole serves the operators' web console on the API's listener: the
// console answers its own paths (/, /login, /devices, ...) and hands
// everything else (/api/v1/..., /crl, /healthz) to apiHandler, through
// which it also runs every change an operator makes.
func (s *Server) withConsole(apiHandler http.Handler) http.Handler {
	c, err := console.New(console.Config{
		Auth: s.Auth, API: apiHandler, Inventory: s.Inv, Attestations: s.Attest, Policies: s.Policy,
		Secrets: s.secretSvc, CA: s.CA, Connected: s.transport.Connected,
		Logger: s.log.With("component", "console"),
	}.With(s.consoleExtensions()...))
	if err != nil {
		// Only a defect in the embedded templates gets here (the console's
		// tests parse them): keep the API up.
		s.log.Error("the console could not be built; serving the API only", "err", err)
		return apiHandler
	}
	// Through the server's verdict hook, not Attest.OnVerdict: that one
	// callback slot belongs to tests and benchmarks.
	observe := c.ObserveVerdict
	s.consoleVerdict.Store(&observe)
	return c
}

// quarantiner quarantines a device on an operator's request (POST
// /api/v1/devices/{id}/quarantine) the way governance does.
func (s *Server) quarantiner() api.Quarantiner {
	return governance.InventoryQuarantiner{Inventory: s.Inv, Disconnect: s.transport.Disconnect, Source: inventory.CauseOperator}
}
