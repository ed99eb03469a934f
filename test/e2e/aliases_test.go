package e2e

import "github.com/sigil-iot/sigil/device/agent"

type (
	agentConfig = agent.Config
	agentStatus = agent.Status
)

func agentDuration(d interface{ Nanoseconds() int64 }) agent.Duration {
	return agent.Duration(d.Nanoseconds())
}
