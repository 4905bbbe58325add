#!/usr/bin/env bash
# One command from a fresh clone to a running node:
#   bash deploy/setup.sh             install everything, then run `dicomnode serve` (default config)
#   bash deploy/setup.sh --no-start  install only (CI uses this)
# Installs the Debian packages the tests use (dcmtk, Orthanc, PostgreSQL) when apt-get is available, a
# virtual environment in .venv with the project pinned by constraints.txt, then starts the node.
set -euo pipefail
cd "$(dirname "$0")/.."

start=1
[ "${1:-}" = "--no-start" ] && start=0

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # dcmtk: storescu/echoscu/storescp/dcmdump; orthanc: the PACS the end-to-end tests deliver to;
  # postgresql: the server the PostgreSQL-index tests start a throw-away cluster of.
  $SUDO apt-get install -y -qq --no-install-recommends dcmtk orthanc orthanc-dicomweb \
    postgresql >/dev/null
  # The packages start a system Orthanc on 4242/8042 and a PostgreSQL cluster on 5432; the
  # tests start their own on free ports.
  $SUDO systemctl stop orthanc 2>/dev/null || $SUDO service orthanc stop 2>/dev/null || true
  $SUDO systemctl stop postgresql 2>/dev/null || $SUDO service postgresql stop 2>/dev/null || true
else
  echo "apt-get not found: install dcmtk and Orthanc yourself to run the tests" >&2
fi

bash deploy/install.sh

if [ "$start" -eq 1 ]; then
  echo "Starting dicomnode with config.yaml (Ctrl-C stops it; 'dicomnode status' in another shell)"
  exec .venv/bin/dicomnode serve --config config.yaml
fi
