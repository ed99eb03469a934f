package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"

	"github.com/sigil-iot/sigil/fleet/backup"
	"github.com/sigil-iot/sigil/fleet/server"
	"github.com/sigil-iot/sigil/pkg/config"
)

// backupKeyFlags are the ways to give the archive's key: age public keys
// or an identity file, or a passphrase file.
type backupKeyFlags struct {
	recipient            listFlag
	identity, passphrase *string
}

func (k *backupKeyFlags) define(fs *flag.FlagSet, restore bool) {
	if restore {
		k.identity = fs.String("identity", "", "age identity file (AGE-SECRET-KEY-1…, as age-keygen writes) the archive was encrypted to")
	} else {
		fs.Var(&k.recipient, "recipient", "encrypt to this age public key (age1…; repeat for more); keep its identity file away from the fleet")
	}
	k.passphrase = fs.String("passphrase-file", "", "file whose first line is the passphrase (scrypt; offline backups only)")
}

// passphrase reads the first line of the passphrase file.
func readPassphrase(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, err := bufio.NewReader(io.LimitReader(f, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("%s: empty passphrase", path)
	}
	return line, nil
}

func (k *backupKeyFlags) recipients() ([]age.Recipient, error) {
	switch {
	case len(k.recipient) > 0 && *k.passphrase != "":
		return nil, usageError{"backup takes --recipient or --passphrase-file, not both"}
	case len(k.recipient) > 0:
		to, err := backup.ParseRecipients(k.recipient)
		if err != nil {
			return nil, usageError{fmt.Sprintf("--recipient: %v", err)}
		}
		return to, nil
	case *k.passphrase != "":
		p, err := readPassphrase(*k.passphrase)
		if err != nil {
			return nil, err
		}
		r, err := age.NewScryptRecipient(p)
		if err != nil {
			return nil, err
		}
		return []age.Recipient{r}, nil
	}
	return nil, usageError{"backup needs a key: --recipient age1… or --passphrase-file FILE"}
}

func (k *backupKeyFlags) identities() ([]age.Identity, error) {
	switch {
	case *k.identity != "" && *k.passphrase != "":
		return nil, usageError{"restore takes --identity or --passphrase-file, not both"}
	case *k.identity != "":
		f, err := os.Open(*k.identity)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		ids, err := age.ParseIdentities(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", *k.identity, err)
		}
		return ids, nil
	case *k.passphrase != "":
		p, err := readPassphrase(*k.passphrase)
		if err != nil {
			return nil, err
		}
		id, err := age.NewScryptIdentity(p)
		if err != nil {
			return nil, err
		}
		return []age.Identity{id}, nil
	}
	return nil, usageError{"restore needs a key: --identity FILE or --passphrase-file FILE"}
}

// backupCommand is `sigil backup`: an encrypted archive of a stopped
// fleet's data directory, or with --server of a running fleet, through
// its API.
func backupCommand() *command {
	var key backupKeyFlags
	return &command{name: "backup", args: "--out FILE (--recipient AGE1… | --passphrase-file FILE) [--config FILE] [--data-dir DIR] | --server URL --out FILE --recipient AGE1… [--token-file FILE]",
		summary: "write an encrypted archive of the fleet's data (stores, CA, audit, SSH and secrets keys)",
		note: "With --server, the running fleet at URL writes the archive itself (POST /api/v1/backup, permission backup.read: " +
			"admin tokens only) while it keeps serving: each bbolt store is copied inside one read transaction, the audit log " +
			"last after a checkpoint, and the archive is encrypted on the server to the --recipient public keys (no passphrase: " +
			"the plaintext never leaves the server). The token is --token-file's, else --token, $SIGIL_TOKEN or " +
			"<data-dir>/admin.token. Without --server the fleet must be stopped: the data directory is read directly and a " +
			"store a running fleet holds is refused. The archive (a tar with a manifest of SHA-256s) is encrypted as a whole " +
			"with age to the --recipient public key or the passphrase; nothing is written unencrypted. With database_url, the " +
			"stores in PostgreSQL are not in it: dump the database with pg_dump at the same time (docs/DEPLOY.md).",
		conn: connFlags,
		setup: func(fs *flag.FlagSet) action {
			path := fs.String("config", "", "configuration file (JSON): its data_dir, trust_domain and database_url (offline backups)")
			out := fs.String("out", "", "the archive to write (created, 0600; must not exist)")
			tokenFile := fs.String("token-file", "", "with --server: file holding an API token with backup.read (an admin's)")
			key.define(fs, false)
			return func(ctx context.Context, x *call) error {
				if *out == "" {
					return usageError{"backup needs --out FILE"}
				}
				if *x.api.server != "" {
					return liveBackup(ctx, x, &key, *tokenFile, *out)
				}
				if *tokenFile != "" {
					return usageError{"--token-file is for a backup through the API (--server URL)"}
				}
				to, err := key.recipients()
				if err != nil {
					return err
				}
				var cfg server.Config
				if *path != "" {
					if err := config.Load(*path, &cfg); err != nil {
						return err
					}
				}
				fs.Visit(func(f *flag.Flag) {
					if f.Name == "data-dir" {
						cfg.DataDir = f.Value.String()
					}
				})
				if cfg.DataDir == "" {
					cfg.DataDir = "/var/lib/sigil"
				}
				f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					return err
				}
				m, err := backup.Create(ctx, f, cfg.DataDir, to, backup.Options{TrustDomain: cfg.TrustDomain, Database: cfg.DatabaseURL != ""})
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					os.Remove(*out)
					return err
				}
				var size int64
				for _, f := range m.Files {
					size += f.Size
				}
				fmt.Fprintf(x.stdout, "backed up %s: %s (%d bytes) to %s\n", cfg.DataDir, plural(len(m.Files), "file"), size, *out)
				if m.Database {
					fmt.Fprintln(x.stdout, "database_url is set: the stores in PostgreSQL are not in this archive; pg_dump the database now (docs/DEPLOY.md)")
				}
				return nil
			}
		}}
}

// liveBackup is `sigil backup --server URL`: the running fleet writes the
// archive, encrypted to the recipients, and this writes it to out.
func liveBackup(ctx context.Context, x *call, key *backupKeyFlags, tokenFile, out string) error {
	if *key.passphrase != "" {
		return usageError{"a backup through the API is encrypted on the server to age public keys: use --recipient age1…, not --passphrase-file"}
	}
	if len(key.recipient) == 0 {
		return usageError{"backup needs a key: --recipient age1…"}
	}
	if _, err := backup.ParseRecipients(key.recipient); err != nil {
		return usageError{fmt.Sprintf("--recipient: %v", err)}
	}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return usageError{"--token-file: " + err.Error()}
		}
		*x.api.token = strings.TrimSpace(string(b))
	}
	c, err := x.api.client()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	files, n, err := c.Backup(ctx, key.recipient, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return err
	}
	fmt.Fprintf(x.stdout, "backed up the running fleet at %s: %s, %d bytes encrypted, to %s\n", c.BaseURL, plural(files, "file"), n, out)
	return nil
}

// restoreCommand is `sigil restore`: an archive of sigil backup, verified
// and restored into a new data directory.
func restoreCommand() *command {
	var key backupKeyFlags
	return &command{name: "restore", args: "FILE --data-dir DIR (--identity FILE | --passphrase-file FILE)",
		summary: "restore an archive of sigil backup into a new data directory, verified",
		note: "The data directory must not exist or be empty. Every file is checked against the archive's manifest and the " +
			"audit chain against its key before the directory is renamed into place; on any error nothing is written. " +
			"Then start sigil serve on it: devices reconnect with their certificates, without enrolling again.",
		pos: []string{"an archive file"},
		setup: func(fs *flag.FlagSet) action {
			dataDir := fs.String("data-dir", "", "the new data directory")
			key.define(fs, true)
			return func(ctx context.Context, x *call) error {
				if *dataDir == "" {
					return usageError{"restore needs --data-dir DIR"}
				}
				ids, err := key.identities()
				if err != nil {
					return err
				}
				f, err := os.Open(x.arg(0))
				if err != nil {
					return err
				}
				defer f.Close()
				res, err := backup.Restore(ctx, f, *dataDir, ids...)
				if errors.Is(err, backup.ErrCorrupt) || errors.Is(err, backup.ErrAudit) {
					fmt.Fprintf(x.stderr, "sigil: %v; nothing was restored\n", err)
					return exitErr{code: exitTampered}
				}
				if err != nil {
					return fmt.Errorf("%w; nothing was restored", err)
				}
				m := res.Manifest
				fmt.Fprintf(x.stdout, "restored %s from %s (backup of %s", plural(len(m.Files), "file"), x.arg(0), m.Created.Format("2006-01-02T15:04:05Z"))
				if m.TrustDomain != "" {
					fmt.Fprintf(x.stdout, ", trust domain %s", m.TrustDomain)
				}
				fmt.Fprintf(x.stdout, ") into %s\n", *dataDir)
				if res.AuditChecked {
					fmt.Fprintf(x.stdout, "audit log verified: %d entries, %s\n", res.Audit.Entries, plural(res.Audit.Checkpoints, "checkpoint"))
				}
				if m.Database {
					fmt.Fprintln(x.stdout, "the fleet kept stores in PostgreSQL: pg_restore the dump taken with this backup, then run sigil serve (docs/DEPLOY.md)")
				}
				return nil
			}
		}}
}
