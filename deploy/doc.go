// Package deploy holds no code: its tests check the deployment files
// beside it. The systemd units of deploy/systemd must keep their exposure
// ratings (systemd-analyze security) and verify (systemd-analyze verify);
// the Debian packages `make package` builds from them (deploy/package,
// scripts/package.sh) must pass lintian and install, upgrade, remove and
// purge in a throwaway root without losing state. docs/DEPLOY.md
// describes both.
package deploy
