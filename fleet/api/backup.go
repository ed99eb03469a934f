package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-iot/sigil/fleet/audit"
	"github.com/sigil-iot/sigil/fleet/auth"
	"github.com/sigil-iot/sigil/fleet/backup"
)

// Backups writes encrypted archives of the running fleet
// (*backup.Live).
type Backups interface {
	Snapshot(ctx context.Context, recipients []string) (*backup.Archive, error)
}

var _ Backups = (*backup.Live)(nil)

// BackupRequest is POST /api/v1/backup.
type BackupRequest struct {
	// Recipients are the age public keys (age1…, 1 to 16) the archive is
	// encrypted to, on the server: its plaintext never leaves the fleet.
	Recipients []string `json:"recipients"`
}

// MediaBackup is the media type of an archive (age-encrypted).
const MediaBackup = "application/vnd.sigil.backup+age"

// BackupFilesHeader carries the number of files in the archive.
const BackupFilesHeader = "X-Sigil-Backup-Files"

// Write deadlines of a backup: for writing the archive to the spool (the
// client waits without a byte meanwhile), then for each chunk sent.
const (
	backupSpoolTime = time.Hour
	backupChunkTime = time.Minute
)

func (h *handler) routesBackup() {
	h.route("POST /api/v1/backup", auth.PermBackupRead, h.backup)
	h.describe("POST /api/v1/backup", "Back up the running fleet: every bbolt store (each copied inside one read transaction), the CA, audit, SSH and secrets keys and the other files of the data directory, as the archive sigil restore reads, encrypted on the server to the request's age public keys ("+MediaBackup+")", BackupRequest{}, nil)
}

func (h *handler) backup(w http.ResponseWriter, r *http.Request, who string) {
	if h.cfg.Backup == nil {
		problem(w, http.StatusNotImplemented, "not implemented", "live backups are not enabled on this server")
		return
	}
	var req BackupRequest
	if !decode(w, r, &req) {
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(backupSpoolTime))
	a, err := h.cfg.Backup.Snapshot(r.Context(), req.Recipients)
	switch {
	case errors.Is(err, backup.ErrRecipient):
		problem(w, http.StatusBadRequest, "bad request", backup.ErrRecipient.Error())
		return
	case errors.Is(err, backup.ErrBusy):
		problem(w, http.StatusConflict, "conflict", "another backup is in progress; try again when it is done")
		return
	case err != nil:
		h.internal(w, err)
		return
	}
	defer a.Close()
	h.log.Info("backup taken", "user", who, "files", len(a.Manifest.Files), "bytes", a.Size)
	if h.cfg.Audit != nil {
		// Whose keys open the archive that leaves the fleet (public keys).
		e := audit.New(audit.User(who), "backup.create", "fleet").With("recipients", strings.Join(req.Recipients, " ")).
			With("files", strconv.Itoa(len(a.Manifest.Files))).With("bytes", strconv.FormatInt(a.Size, 10))
		if err := h.cfg.Audit.Record(context.WithoutCancel(r.Context()), e); err != nil {
			h.log.Error("audit: recording a backup failed", "err", err)
		}
	}
	w.Header().Set("Content-Type", MediaBackup)
	w.Header().Set("Content-Length", strconv.FormatInt(a.Size, 10))
	w.Header().Set("Content-Disposition", `attachment; filename="sigil-`+a.Manifest.Created.Format("20060102T150405Z")+`.age"`)
	w.Header().Set(BackupFilesHeader, strconv.Itoa(len(a.Manifest.Files)))
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, 256<<10)
	for {
		n, rerr := a.Read(buf)
		if n > 0 {
			_ = rc.SetWriteDeadline(time.Now().Add(backupChunkTime))
			if _, err := w.Write(buf[:n]); err != nil {
				h.log.Warn("backup: the client stopped reading", "user", who, "err", err)
				return
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				// Short of Content-Length: the client sees a cut
				// response, never a short archive as a whole one.
				h.log.Error("backup: reading the spool failed", "err", rerr)
			}
			return
		}
	}
}

// Backup asks the server for a live backup encrypted to recipients (age
// public keys) and writes the archive to w; it returns the archive's
// number of files and bytes. It waits as long as ctx allows (the
// client's own timeout does not apply: the server answers once the
// archive is written), and fails when the answer is cut short.
func (c *Client) Backup(ctx context.Context, recipients []string, w io.Writer) (files int, n int64, err error) {
	body, err := json.Marshal(BackupRequest{Recipients: recipients})
	if err != nil {
		return 0, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/api/v1/backup", bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := *c.HTTP
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		se := &StatusError{Status: resp.StatusCode}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&se.Problem)
		return 0, 0, se
	}
	if ct := resp.Header.Get("Content-Type"); ct != MediaBackup {
		return 0, 0, fmt.Errorf("api: backup: the answer is %q, not an archive", ct)
	}
	n, err = io.Copy(w, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return 0, n, fmt.Errorf("api: backup: %w", err)
	}
	files, _ = strconv.Atoi(resp.Header.Get(BackupFilesHeader))
	return files, n, nil
}
