#!/usr/bin/env bash
# Make `redis-server` available for the online-store tests (`ripple feed`): Debian's package.
# Idempotent: does nothing when redis-server is on PATH. Needs root (or passwordless sudo) and apt.
#
# Where systemd runs, the package's own service may start on :6379; the tests never use it
# (they start their own server on a free loopback port with a temporary data directory).
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
log() { printf 'redis/install.sh: %s\n' "$*" >&2; }
command -v apt-get >/dev/null 2>&1 \
  || { log "error: no apt-get; install Redis 6 or later so that redis-server is on PATH"; exit 1; }
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
    || { log "error: installing needs root: run 'sudo apt-get install -y redis-server' once"; exit 1; }
  sudo=(sudo -n env DEBIAN_FRONTEND=noninteractive)
fi
log "installing Debian's redis-server package (first time on this machine)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends redis-server >/dev/null
command -v redis-server >/dev/null 2>&1 || { log "error: redis-server still missing after install"; exit 1; }
log "$(redis-server --version 2>&1 | head -1)"
