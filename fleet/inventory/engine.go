package inventory

import "context"

// engine is a storage backend of the inventory: transactions over its
// records, and the reads a backend serves its own way. The Store holds
// the rules and calls an engine for storage only.
type engine interface {
	// view runs fn in a read-only transaction.
	view(ctx context.Context, fn func(tx) error) error
	// update runs fn in a read-write transaction of its own; fn may run
	// more than once (a PostgreSQL transaction that failed to serialize
	// runs again), the last run's effects are the ones committed.
	update(ctx context.Context, fn func(tx) error) error
	// write is update for the frequent small writes (device updates,
	// events): bbolt shares one transaction and fsync between concurrent
	// ones (group commit).
	write(ctx context.Context, fn func(tx) error) error
	// writeAll runs each of fns as write would, and returns each one's
	// error: bbolt runs them in one transaction (a failing one left out,
	// the others run again without it), PostgreSQL one after the other.
	writeAll(ctx context.Context, fns []func(tx) error) []error
	// query serves Store.Query (q checked, its filters encoded).
	query(ctx context.Context, q *Query, where map[Field][]byte, after []byte, limit, budget int) (Page, error)
	// count serves Store.Count.
	count(ctx context.Context, where map[Field][]byte) (int, error)
	// counts serves Store.Counts.
	counts(ctx context.Context) (map[State]int, error)
	// events serves Store.Events.
	events(ctx context.Context, deviceID string, limit int) ([]Event, error)
	close() error
}

// tx is one transaction of an engine.
type tx interface {
	// device returns the record of id (ErrNotFound when none); in a
	// read-write transaction it holds the record until the end.
	device(id string) (*Device, error)
	// state returns the lifecycle state of id (ErrNotFound when none),
	// decoding nothing else of its record.
	state(id string) (stateOnly, error)
	// ekHolder returns the ID of the device with the EK fingerprint, ""
	// when none.
	ekHolder(fingerprint string) (string, error)
	// putDevice writes d, whose stored record is old (nil for a new
	// one), with its EK and field indexes. An EK another device holds
	// is ErrEKConflict.
	putDevice(old, d *Device) error
	// protocolChanged tells that the transaction changes the protocol
	// version of device id (or creates it): once it commits, the store
	// forgets the version it keeps, and so do the other replicas
	// (TopicProtocols).
	protocolChanged(id string) error
	// revocation reports whether serial has a revocation record.
	revoked(serial string) (bool, error)
	// putRevocation adds r.
	putRevocation(r *Revocation) error
	// eachRevocation calls fn with every revocation, in serial order.
	eachRevocation(fn func(*Revocation) error) error
	// token returns the token id, or nil when none.
	token(id string) (*Token, error)
	// tokenByHash returns the token whose secret hashes to hash, or nil.
	tokenByHash(hash []byte) (*Token, error)
	// putToken inserts or replaces t (its hash never changes).
	putToken(t *Token) error
	// deleteToken removes t.
	deleteToken(t *Token) error
	// eachToken calls fn with every token.
	eachToken(fn func(*Token) error) error
	// addEvent appends e to its device's events (anonymous ones apart)
	// and drops the oldest beyond limit of the same kind.
	addEvent(e *Event, limit int) error
	// eachDevice calls fn with every device, in ID order (Copy).
	eachDevice(fn func(*Device) error) error
	// eachEvent calls fn with every event, anonymous ones included, in
	// the order they were added (Copy).
	eachEvent(fn func(*Event) error) error
}
