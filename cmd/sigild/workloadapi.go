//go:build workloadapi

package main

import (
	"context"
	"log/slog"

	"github.com/sigil-iot/sigil/device/agent"
	"github.com/sigil-iot/sigil/device/workload"
)

// A workloadapi build (go build -tags workloadapi ./cmd/sigild) serves the
// SPIFFE Workload API on workload_api_socket (device/workload). Default
// builds carry none of it: gRPC and protobuf cost about 4 MB on arm64,
// past the 7 MiB budget (TestWorkloadAPIOnlyByTag).

// workloadAPI returns the agent option and the server's task for
// workload_api_socket (none when it is unset).
func workloadAPI(cfg agent.Config, log *slog.Logger) ([]agent.Option, func(context.Context) error, error) {
	if cfg.WorkloadAPISocket == "" {
		return nil, nil, nil
	}
	m := workload.NewManager(log.With("component", "workload"), nil)
	srv := workload.NewServer(m, log.With("component", "workload"), "")
	return []agent.Option{agent.WithExtension(m)}, func(ctx context.Context) error { return srv.Serve(ctx, cfg.WorkloadAPISocket) }, nil
}
