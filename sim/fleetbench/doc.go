// Package fleetbench is `sigil-sim bench fleet`: a fleet of simulated
// devices at scale against one `sigil serve`, and the figures a user of
// the fleet relies on — devices held, enrollments per second, time to
// active, QoS 1 messages sent against those the fleet counted, the fleet's
// memory and CPU per device, a forced re-key of every device, a firmware
// campaign, quarantine latency under load, a restart under load, and the
// API's and console's latency meanwhile (docs/BENCHMARKS.md §10).
//
// The fleet is `sigil serve` started as a child process (embedded broker,
// bbolt stores), so that its CPU and memory, read from its own /metrics
// (process_cpu_seconds_total, process_resident_memory_bytes,
// go_memstats_heap_inuse_bytes), are apart from the devices'; or a fleet
// already running. The devices are sim/swarm swarms in shard processes
// (the same program re-executed, commanded over its standard input and
// output: Shard), none holding more than MaxShardDevices connections.
//
// In its scale-out mode (pool.go; docs/BENCHMARKS.md §12) the fleet is
// several `sigil serve` replicas on a PostgreSQL, with a pool of
// Mosquitto brokers written by `sigil broker-config` in place of the
// embedded broker, all child processes; the brokers' and the database's
// CPU and memory are read from /proc beside the replicas' /metrics.
//
// It is for simulation only and never reaches sigil or sigild.
package fleetbench
