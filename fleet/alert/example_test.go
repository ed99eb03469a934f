package alert_test

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sigil-iot/sigil/fleet/alert"
	"github.com/sigil-iot/sigil/pkg/config"
)

// Repeated authentication failures on one device open one alert, which an
// operator acknowledges and resolves.
func Example() {
	dir, _ := os.MkdirTemp("", "alert-example")
	defer os.RemoveAll(dir)
	e, err := alert.Open(alert.Config{Path: filepath.Join(dir, "alerts.db")})
	if err != nil {
		panic(err)
	}
	defer e.Close()
	_, err = e.PutRule(alert.Rule{ID: "auth-failures", Severity: alert.SeverityWarning,
		Event: &alert.EventMatch{Kind: alert.EventAuthFailure, Count: 3, Window: config.Duration(10 * time.Minute)}})
	if err != nil {
		panic(err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := range 4 {
		_ = e.Event("gw-7", alert.EventAuthFailure, "warning", at.Add(time.Duration(i)*time.Minute), map[string]string{"user": "root"})
	}
	open, _, _ := e.Alerts(alert.Query{Open: true})
	a := open[0]
	fmt.Println(len(open), a.DeviceID, a.State, a.Count, a.Summary, a.Evidence["user"])
	ack, _ := e.Acknowledge(a.ID, "alice", "investigating")
	fmt.Println(ack.State, ack.AckedBy)
	res, _ := e.Resolve(a.ID, "alice", "password rotated")
	fmt.Println(res.State, res.ResolvedBy)
	// Output:
	// 1 gw-7 firing 2 3 auth-failure events within 10m0s root
	// acknowledged alice
	// resolved alice
}
