package e2e

import "github.com/sigil-iot/sigil/device/agent"

type (
	agentConfig = agent.Config
	agentStatus = agent.Status
)
