package boltdb

import (
	"os"
	"slices"
	"sync"
)

// held lists the files this process has open with Open, so that a live
// backup (fleet/backup) can copy a store through the handle that holds
// its lock: bbolt locks a file for its one writer with flock, which
// refuses every other handle, even one opened by the same process. The
// list is process-wide on purpose, as the locks it mirrors are: a file
// is held at most once per process, whoever opened it, and the stores
// that open them (about fifteen, each with its own Open) need no handle
// passed down to be found. It is the package's only mutable state;
// nothing outside it changes the list (Open adds, DB.Close removes).
var held struct {
	mu  sync.Mutex
	dbs []heldDB
}

type heldDB struct {
	db *DB
	fi os.FileInfo // the file as opened, for os.SameFile
}

// hold adds db, opened from path, to the list.
func hold(db *DB, path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return // not findable by Held; Held falls back to opening the file
	}
	held.mu.Lock()
	defer held.mu.Unlock()
	held.dbs = append(held.dbs, heldDB{db: db, fi: fi})
}

// release removes db from the list.
func release(db *DB) {
	held.mu.Lock()
	defer held.mu.Unlock()
	held.dbs = slices.DeleteFunc(held.dbs, func(h heldDB) bool { return h.db == db })
}

// Held returns the handle through which this process holds the file at
// path (opened with Open and not closed yet), or nil. It compares files,
// not names (os.SameFile): another name of the same file finds it too.
// The handle stays the opener's: use it for View only, and expect
// bbolt's ErrDatabaseNotOpen when the opener closes it meanwhile.
func Held(path string) *DB {
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	held.mu.Lock()
	defer held.mu.Unlock()
	for _, h := range held.dbs {
		if os.SameFile(h.fi, fi) {
			return h.db
		}
	}
	return nil
}

// Close closes the file and removes it from the handles Held finds.
func (db *DB) Close() error {
	release(db)
	return db.DB.Close()
}
