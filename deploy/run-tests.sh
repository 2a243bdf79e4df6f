#!/usr/bin/env bash
# The test command of README and CI: set up the environment (venv, Prometheus), start the real Kafka broker,
# run lint and the whole test suite (unit, doctests, integration), stop the broker.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(bash deploy/bootstrap.sh)
export PATH="$venv/bin:$PATH"
bash deploy/prometheus/install.sh  # prometheus + promtool for the observability tests; no-op once present
bash deploy/redis/install.sh       # redis-server for the online-store (ripple feed) tests; no-op once present

"$venv/bin/ruff" check .
"$venv/bin/mypy"

started_kafka=0
if ! bash deploy/kafka/kafka.sh status >/dev/null 2>&1; then
  bash deploy/kafka/kafka.sh start
  started_kafka=1
fi
cleanup() {
  if [ "$started_kafka" = 1 ]; then bash deploy/kafka/kafka.sh stop || true; fi
}
trap cleanup EXIT

export RIPPLE_TEST_BROKER=${RIPPLE_TEST_BROKER:-127.0.0.1:${RIPPLE_KAFKA_PORT:-9092}}
# The native core must be built here: its tests fail instead of skipping (tests/unit/graph_state/test_native.py).
export RIPPLE_REQUIRE_NATIVE=1
"$venv/bin/python" -m pytest -q "$@"
