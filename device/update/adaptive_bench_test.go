package update_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sigil-iot/sigil/device/update"
	"github.com/sigil-iot/sigil/firmware/blockindex"
)

// ext4Image builds a 32 MiB ext4 image of the files with mke2fs -d,
// reproducibly (fixed UUID, hash seed, time), as image builders do.
func ext4Image(b *testing.B, files map[string][]byte) []byte {
	b.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatal("mke2fs (e2fsprogs) is required")
		}
		b.Skip("mke2fs (e2fsprogs) not installed")
	}
	root := filepath.Join(b.TempDir(), "root")
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	img := filepath.Join(b.TempDir(), "rootfs.ext4")
	cmd := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", "2b6f1c50-4a1e-4e8e-9a59-0c6f1f3d6e11",
		"-E", "hash_seed=2b6f1c50-4a1e-4e8e-9a59-0c6f1f3d6e11", "-d", root, img, "32M")
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1765000000")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("mke2fs: %v\n%s", err, out)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// rootfs is a root file system of 300 files (about 19 MiB) of
// incompressible content.
func rootfs() map[string][]byte {
	files := map[string][]byte{}
	for i := range 300 {
		files[fmt.Sprintf("usr/lib/pkg%03d/lib%03d.so", i/10, i)] = noise(fmt.Sprintf("file %d", i), 16<<10+(i*7919)%(112<<10))
	}
	return files
}

// BenchmarkAdaptive runs whole updates from an old image in slot a to a new
// one through the engine, over HTTPS on loopback, and reports the share of
// the image fetched (index included) and the index's size against the
// image's:
//
//   - ext4-one-file: one file of a 32 MiB ext4 image replaced by a 100 KiB
//     one (mke2fs -d places every file after it elsewhere);
//   - ext4-appended: a 2 MiB file added;
//   - unrelated: a new image with nothing in common (must stay near 100 %);
//   - ext4-one-file/full: the one-file change without an index (today's
//     update), for the install time;
//
// each with 4 KiB blocks (the file system's block size) and 64 KiB blocks.
func BenchmarkAdaptive(b *testing.B) {
	base := rootfs()
	v1 := ext4Image(b, base)
	changed := map[string][]byte{}
	for k, v := range base {
		changed[k] = v
	}
	changed["usr/lib/pkg012/lib120.so"] = noise("lib120 v2", 100<<10)
	appended := map[string][]byte{"opt/new/agent.bin": noise("new agent", 2<<20)}
	for k, v := range base {
		appended[k] = v
	}
	one, app, unrelated := ext4Image(b, changed), ext4Image(b, appended), noise("unrelated", len(v1))
	cases := []struct {
		name string
		v2   []byte
		bs   int64 // 0: no index, a full update
	}{
		{"ext4-one-file/4KiB", one, 4 << 10},
		{"ext4-one-file/64KiB", one, 64 << 10},
		{"ext4-appended/4KiB", app, 4 << 10},
		{"ext4-appended/64KiB", app, 64 << 10},
		{"unrelated/4KiB", unrelated, 4 << 10},
		{"unrelated/64KiB", unrelated, 64 << 10},
		{"ext4-one-file/full", one, 0},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var fetched int64
			var requests int
			var index []byte
			b.SetBytes(int64(len(c.v2)))
			for b.Loop() {
				b.StopTimer()
				e := newEnv(b)
				if err := os.WriteFile(e.fb.Image("a"), v1, 0o600); err != nil {
					b.Fatal(err)
				}
				m, bundle := release("2.0.0", 1, c.v2)
				if c.bs > 0 {
					m, bundle, index = adaptiveReleaseSize(b, c.v2, c.bs)
					e.srv.put("/v2.img"+update.IndexSuffix, index)
				}
				url := e.srv.put("/v2.img", c.v2)
				eng := e.engine()
				b.StartTimer()
				rep := e.run(eng, "u1", m, bundle, url)
				if rep.Phase != update.PhaseCommitted {
					b.Fatalf("final report %+v", rep)
				}
				fetched = rep.Fetched
				requests = len(e.srv.rangesOf("/v2.img"))
			}
			b.ReportMetric(100*float64(fetched)/float64(len(c.v2)), "%fetched")
			b.ReportMetric(float64(requests), "requests")
			if index != nil {
				b.ReportMetric(100*float64(len(index))/float64(len(c.v2)), "%index")
			}
		})
	}
}

// adaptiveReleaseSize is adaptiveRelease with a block size.
func adaptiveReleaseSize(b *testing.B, img []byte, bs int64) (manifest, bundle, index []byte) {
	index, err := blockindex.Build(bytes.NewReader(img), bs)
	if err != nil {
		b.Fatal(err)
	}
	d, ix := sha256.Sum256(img), sha256.Sum256(index)
	manifest, bundle = sign(testManifest{Name: "gw-firmware", Version: "2.0.0", SecurityVersion: 1, Size: int64(len(img)),
		SHA256: fmt.Sprintf("%x", d), Model: testModel, Expires: testNow.Add(24 * 60 * 60 * 1e9),
		BlockSize: bs, IndexSHA256: fmt.Sprintf("%x", ix)})
	return manifest, bundle, index
}
