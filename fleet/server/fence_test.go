package server

import (
	"os/exec"
	"strings"
	"testing"
)

// storageDrivers are the database drivers (and the standard library's
// database layer) that belong to the packages owning the stores: the
// composition root opens stores only through them.
var storageDrivers = []string{
	"go.etcd.io/bbolt", "github.com/boltdb/bolt",
	"github.com/jackc/pgx", "github.com/lib/pq", "database/sql",
	"github.com/mattn/go-sqlite3", "modernc.org/sqlite",
}

// TestWiringFence fails when fleet/server, the fleet's composition root,
// itself imports a storage driver (in its code or its tests): a service
// with a file of its own lives beside its domain, which opens and owns
// its store behind the interfaces its consumers name.
func TestWiringFence(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{join .Imports \"\\n\"}}\n{{join .TestImports \"\\n\"}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	imports := strings.Fields(string(out))
	if len(imports) < 10 {
		t.Fatalf("go list returned too little to be real: %v", imports)
	}
	for _, imp := range imports {
		for _, d := range storageDrivers {
			if imp == d || strings.HasPrefix(imp, d+"/") {
				t.Errorf("fleet/server imports %s: open the store in the package that owns it", imp)
			}
		}
	}
}
