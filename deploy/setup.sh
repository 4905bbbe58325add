#!/usr/bin/env bash
# One command from a fresh clone to a running node, with a local PACS and viewer to see results in:
#   bash deploy/setup.sh               install everything, start the viewer stack (Orthanc as the
#                                      destination `pacs` + OHIF on http://127.0.0.1:3000), then
#                                      run `dicomnode serve` (default config) in the foreground
#   bash deploy/setup.sh --no-viewer   the same without the local Orthanc + OHIF (sites that send
#                                      to their own PACS)
#   bash deploy/setup.sh --no-start    install only, start nothing (CI uses this)
# Installs the Debian packages the node and its tests use when apt-get is available, a virtual
# environment in .venv with the project pinned by constraints.txt, and OHIF's built dist/.
set -euo pipefail
cd "$(dirname "$0")/.."

start=1
viewer=1
for arg in "$@"; do
  case "$arg" in
    --no-start) start=0 ;;
    --no-viewer) viewer=0 ;;
    *) echo "usage: bash deploy/setup.sh [--no-start] [--no-viewer]" >&2; exit 2 ;;
  esac
done

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # dcmtk: storescu/echoscu/storescp/dcmdump; orthanc + orthanc-dicomweb: the local PACS and the
  # one the end-to-end tests deliver to; postgresql: the server the PostgreSQL-index tests start a
  # throw-away cluster of; nginx + npm: the local OHIF viewer (served by nginx, fetched by npm);
  # chromium: the browser the viewer tests drive; systemd: systemd-analyze for the unit tests;
  # prometheus: the server the metrics tests scrape the node with; rabbitmq-server: the broker
  # the tests of workers on other machines (jobs.backend: celery) start on free ports.
  $SUDO apt-get install -y -qq --no-install-recommends dcmtk orthanc orthanc-dicomweb \
    postgresql nginx chromium systemd prometheus rabbitmq-server >/dev/null
  # Debian's npm conflicts with a Node.js from elsewhere (NodeSource ships its own npm).
  command -v npm >/dev/null 2>&1 || $SUDO apt-get install -y -qq --no-install-recommends npm \
    >/dev/null
  # The packages start a system Orthanc on 4242/8042 and a PostgreSQL cluster on 5432. The viewer
  # stack runs its own Orthanc (its own storage, under var/viewer) on 4242/8042 and the tests
  # start their own servers on free ports, so those two are stopped (and the system Orthanc kept
  # from coming back at boot on the stack's ports). nginx keeps its port 80; ours is 3000.
  $SUDO systemctl disable --now orthanc 2>/dev/null || $SUDO service orthanc stop 2>/dev/null || true
  $SUDO systemctl stop postgresql 2>/dev/null || $SUDO service postgresql stop 2>/dev/null || true
  # Prometheus (and its node exporter) start on 9090/9100, RabbitMQ on 5672 (with epmd on 4369);
  # the tests run their own, and a single node needs no broker.
  for service in prometheus prometheus-node-exporter rabbitmq-server; do
    $SUDO systemctl disable --now "$service" 2>/dev/null || $SUDO service "$service" stop \
      2>/dev/null || true
  done
else
  echo "apt-get not found: install dcmtk, Orthanc (+ DICOMweb plugin), nginx, npm and" \
       "chromium yourself" >&2
fi

bash deploy/install.sh
# OHIF's built dist/ (npm pack of the pinned @ohif/app) into var/viewer/ohif.
.venv/bin/dicomnode viewer install --config config.yaml

if [ "$start" -eq 1 ]; then
  if [ "$viewer" -eq 1 ]; then
    .venv/bin/dicomnode viewer start --config config.yaml
    echo "Open http://127.0.0.1:3000/ to see what the node sends to its destination 'pacs'."
  fi
  echo "Starting dicomnode with config.yaml (Ctrl-C stops it; 'dicomnode status' in another shell)"
  exec .venv/bin/dicomnode serve --config config.yaml
fi
