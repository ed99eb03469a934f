// Package telemetry is the device side of Sigil's telemetry: a Collector
// that samples the system from /proc and statfs (plus values the agent
// adds through Sources), a Sampler that appends a point to the durable
// outbox every interval, and a Sender that sends the outbox to the fleet
// in order and deletes only what the fleet acknowledged.
//
// # What is collected
//
// Numeric metrics (wire.TelemetryPoint.Metrics):
//
//	cpu.busy                  share of non-idle CPU time since the previous point, 0..1 (from the second point on)
//	cpu.count                 CPUs in /proc/stat
//	load.1, load.5, load.15   load averages
//	mem.total_bytes, mem.available_bytes, mem.used_ratio
//	swap.total_bytes, swap.used_bytes
//	disk.<label>.total_bytes, disk.<label>.avail_bytes, disk.<label>.used_ratio   per Config.Disks (default label "root": /)
//	net.rx_bytes, net.tx_bytes, net.rx_packets, net.tx_packets,
//	net.rx_errors, net.tx_errors, net.rx_dropped, net.tx_dropped   counters summed over interfaces but loopback (reset at boot)
//	net.interfaces            interfaces counted
//	proc.count                processes
//	listen.tcp.count, listen.udp.count   listening TCP ports, unconnected UDP ports (IPv4 and IPv6)
//	uptime.seconds
//	telemetry.collect_errors  collectors and sources that failed for this point
//
// Sets (Metrics' companions for "never seen before" rules): listen.tcp and
// listen.udp, the port numbers (at most wire.MaxSetMembers, the lowest).
// Info: boot_id (a reboot changes it).
//
// A simulated device sets Config.System to a synthetic source in place of
// all of the above read from /proc and statfs (sim/synthetic), so that
// thousands of devices in one process do not each scan the host.
//
// Sources add what only the agent knows. Suggested names: tpm.ok (1 or 0),
// cert.expiry_seconds, update.state (info), auth.failures (AuthLog counts
// failed logins in a log file), sigild.* for the daemon's own counters
// and telemetry.* for the Sender's (Sender.Source).
//
// # Delivery
//
// The outbox (device/state.Outbox) numbers points and is bounded; when it
// is full the oldest points are dropped and counted, and every batch
// carries the count. The Sender sends the oldest points first, one batch
// at a time, waits for the fleet's telemetry.ack (an MQTT PUBACK only says
// the broker has the batch), deletes what the ack covers, and backs off
// with jitter when publishing fails or no ack comes. See pkg/wire for how
// the fleet turns sequence numbers into exactly-once delivery.
//
// Wiring in the agent: Sampler.Appended is Sender.Kick (new points wake an
// idle sender); the session loop calls Sender.Retry after each connect (it
// ends a backoff) and passes each telemetry.ack from the down topic to
// Sender.HandleAck; the Publisher publishes to the up "telemetry" topic of
// the current session and fails while there is none.
package telemetry
