#!/usr/bin/env bash
# Starts Debian's PostgreSQL cluster and creates the role the vault tests use; prints the
# URL to export as TONEWALL_TEST_POSTGRES. Run by .ci/run; run it by hand for local tests.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v pg_lsclusters >/dev/null; then
  echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2
  exit 1
fi
version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  $SUDO pg_createcluster "$version" main >&2
fi
$SUDO pg_ctlcluster "$version" main start >&2 2>/dev/null || true
for _ in $(seq 50); do
  if $SUDO runuser -u postgres -- psql -qtAc "SELECT 1" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
# A superuser role, because each test creates and drops its own database.
$SUDO runuser -u postgres -- psql -qtAc \
  "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tonewall') THEN
     CREATE ROLE tonewall LOGIN SUPERUSER PASSWORD 'tonewall'; END IF; END \$\$;" >&2
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
echo "postgres://tonewall:tonewall@127.0.0.1:${port}/postgres"
