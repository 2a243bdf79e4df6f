#!/usr/bin/env bash
# Create (once per dependency set) the virtual environment Ripple runs in, and install Ripple into it.
#
# The environment lives outside the checkout, under ~/.cache/ripple/venv-<hash of the pinned
# dependencies>, so every clone on a machine (a developer's, CI's) shares one torch install,
# while a fresh machine or a change of pins builds a new one. Override with RIPPLE_VENV.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${RIPPLE_PYTHON:-python3}

deps=$("$py" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = list(project["dependencies"]) + [d for extra in project.get("optional-dependencies", {}).values() for d in extra]
print("\n".join(deps))
PY
)
key=$( { "$py" -c 'import sys; print(sys.version_info[:2])'; echo "$deps"; } | sha256sum | cut -c1-12)
venv=${RIPPLE_VENV:-$HOME/.cache/ripple/venv-$key}

if [ "${1:-}" = "--print-venv" ]; then
  echo "$venv"
  exit 0
fi

mkdir -p "$(dirname "$venv")"
# One builder at a time: concurrent runs (two checkouts, parallel make) wait here.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.ripple-complete" ]; then
  echo "bootstrap: creating $venv (first time on this machine or new pins; torch is large, this takes minutes)" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  mapfile -t dep_list <<<"$deps"
  "$venv/bin/python" -m pip install -q "${dep_list[@]}"
  touch "$venv/.ripple-complete"
fi
# Editable, no deps: seconds. Points the shared environment at this checkout. Tried up to three
# times: setuptools 84 now and then refuses the same pyproject.toml ("`project.license` must be
# valid exactly by one definition (2 matches found)") and takes it on the next try.
for attempt in 1 2 3; do
  if log=$("$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" 2>&1); then
    break
  fi
  if [ "$attempt" = 3 ]; then
    echo "$log" >&2
    exit 1
  fi
  echo "bootstrap: the editable install failed (attempt $attempt), trying again" >&2
done
echo "$venv"
