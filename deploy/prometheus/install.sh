#!/usr/bin/env bash
# Make `prometheus` and `promtool` available for the observability tests (Debian's package).
# Idempotent: does nothing when both are on PATH. Needs root (or passwordless sudo) and apt.
#
# --no-install-recommends keeps out prometheus-node-exporter. Where systemd runs, the
# package's own service may start on :9090; the tests never use it (they start their own
# server on a free port with a temporary data directory).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
log() { printf 'prometheus/install.sh: %s\n' "$*" >&2; }
command -v apt-get >/dev/null 2>&1 \
  || { log "error: no apt-get; install Prometheus 2.x so that prometheus and promtool are on PATH"; exit 1; }
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
    || { log "error: installing needs root: run 'sudo apt-get install -y prometheus' once"; exit 1; }
  sudo=(sudo -n env DEBIAN_FRONTEND=noninteractive)
fi
log "installing Debian's prometheus package (first time on this machine)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 || { log "error: promtool still missing after install"; exit 1; }
log "$(prometheus --version 2>&1 | head -1)"
