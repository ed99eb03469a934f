package backup

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// tarOf builds an unencrypted archive body: the files, then a manifest.
func tarOf(t testing.TB, files map[string]string, m *Manifest) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	if m != nil {
		raw, _ := json.Marshal(m)
		tw.WriteHeader(&tar.Header{Name: ManifestName, Mode: 0o600, Size: int64(len(raw)), Typeflag: tar.TypeReg})
		tw.Write(raw)
	}
	tw.Close()
	return buf.Bytes()
}

// memSink keeps the files in memory and fails the test on a name that
// would leave the directory.
type memSink struct {
	t     *testing.T
	files map[string]*bytes.Buffer
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }

func (m memSink) create(name string, _ fs.FileMode) (io.WriteCloser, error) {
	if !filepath.IsLocal(filepath.FromSlash(name)) || strings.Contains(name, "\\") {
		m.t.Fatalf("extract created %q", name)
	}
	if _, ok := m.files[name]; ok {
		return nil, fs.ErrExist
	}
	b := &bytes.Buffer{}
	m.files[name] = b
	return nopCloser{b}, nil
}

// FuzzExtract: the reader of a decrypted archive never panics, creates
// only local names, and any error it returns is one of the documented
// ones; what it accepts matches the manifest it returns.
func FuzzExtract(f *testing.F) {
	ok := &Manifest{Version: Version, Files: []File{{Path: "a/b.key", Size: 3, SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}}
	f.Add(tarOf(f, map[string]string{"a/b.key": "abc"}, ok))
	f.Add(tarOf(f, map[string]string{"../x": "abc"}, ok))
	f.Add(tarOf(f, map[string]string{"a/b.key": "abd"}, ok))
	f.Add(tarOf(f, map[string]string{"a/b.key": "abc"}, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		out := memSink{t: t, files: map[string]*bytes.Buffer{}}
		m, err := extract(bytes.NewReader(data), out)
		if err == nil && (m.Version != Version || len(m.Files) != len(out.files)) {
			t.Fatalf("accepted %+v with files %v", m, out.files)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
			t.Fatalf("undocumented error: %v", err)
		}
	})
}

// TestExtractChecks: each malformed body is refused with its error.
func TestExtractChecks(t *testing.T) {
	sum := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" // "abc"
	good := func() *Manifest {
		return &Manifest{Version: Version, Files: []File{{Path: "k", Size: 3, SHA256: sum}}}
	}
	other := good()
	other.Version = 99
	extra := good()
	extra.Files = append(extra.Files, File{Path: "gone", Size: 0, SHA256: sum})
	for name, c := range map[string]struct {
		files map[string]string
		m     *Manifest
		want  error
	}{
		"good":          {map[string]string{"k": "abc"}, good(), nil},
		"changed file":  {map[string]string{"k": "abd"}, good(), ErrCorrupt},
		"no manifest":   {map[string]string{"k": "abc"}, nil, ErrCorrupt},
		"escape":        {map[string]string{"../k": "abc"}, good(), ErrCorrupt},
		"absolute":      {map[string]string{"/k": "abc"}, good(), ErrCorrupt},
		"unlisted file": {map[string]string{"k": "abc", "x": ""}, good(), ErrCorrupt},
		"missing file":  {map[string]string{"k": "abc"}, extra, ErrCorrupt},
		"version":       {map[string]string{"k": "abc"}, other, ErrVersion},
		"file and dir":  {map[string]string{"k": "abc", "k/x": ""}, good(), ErrCorrupt},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := extract(bytes.NewReader(tarOf(t, c.files, c.m)), dirSink(t.TempDir()))
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("extract: %v, want %v", err, c.want)
			}
		})
	}
}
