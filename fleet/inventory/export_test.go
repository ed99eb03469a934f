package inventory

import "github.com/sigil-iot/sigil/fleet/storage/boltdb"

// boltDB returns the bbolt file of a store Open returned.
func (s *Store) boltDB() *boltdb.DB { return s.e.(*boltEngine).db }
