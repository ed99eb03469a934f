//go:build !workloadapi

package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/sigil-iot/sigil/device/agent"
)

// workloadAPI refuses workload_api_socket: this sigild was built without
// the SPIFFE Workload API (build tag workloadapi, workloadapi.go).
func workloadAPI(cfg agent.Config, _ *slog.Logger) ([]agent.Option, func(context.Context) error, error) {
	if cfg.WorkloadAPISocket != "" {
		return nil, nil, errors.New("workload_api_socket is set, but this sigild was built without the SPIFFE Workload API (go build -tags workloadapi)")
	}
	return nil, nil, nil
}
