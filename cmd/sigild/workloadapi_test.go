//go:build !workloadapi

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkloadAPISocketNeedsTheTag: a default sigild refuses to run with
// workload_api_socket set, saying it was built without the Workload API,
// rather than run without serving it.
func TestWorkloadAPISocketNeedsTheTag(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sigild.json")
	b, _ := json.Marshal(map[string]string{"broker": "fleet:8883", "model": "gw-1", "firmware": "1.0.0",
		"control": filepath.Join(dir, "c.sock"), "state": filepath.Join(dir, "state.db"), "workload_api_socket": filepath.Join(dir, "w.sock")})
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"run", "--config", cfg}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "-tags workloadapi") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}
