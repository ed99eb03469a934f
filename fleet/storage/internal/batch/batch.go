// Package batch runs a group of writes in one transaction so that each
// lands or fails on its own, for the fleet's storage backends (bbolt and
// the kv layer over it or PostgreSQL).
package batch

import "slices"

// Each runs fns, in order, in one transaction that update opens, and
// returns each one's error (nil for those that landed). A function that
// fails is left out and the others run again in a new transaction, so
// that each lands or fails as if written alone: fns must therefore be
// idempotent, reading what they change from the transaction. A failed
// commit (update's own error, no function having failed) fails every
// function it carried.
func Each[Tx any](update func(func(Tx) error) error, fns []func(Tx) error) []error {
	errs := make([]error, len(fns))
	todo := make([]int, len(fns))
	for i := range todo {
		todo[i] = i
	}
	for len(todo) > 0 {
		failed, ferr := -1, error(nil)
		err := update(func(tx Tx) error {
			failed, ferr = -1, nil // a transaction may run again
			for k, i := range todo {
				if err := fns[i](tx); err != nil {
					failed, ferr = k, err
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			errs[todo[failed]] = ferr
			todo = slices.Delete(todo, failed, failed+1)
			continue
		}
		for _, i := range todo {
			errs[i] = err
		}
		break
	}
	return errs
}
