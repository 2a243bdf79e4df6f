# Two commands for a newcomer: `make demo` (embedded default, no Kafka) and `make test`.
SHELL := /bin/bash
VENV = $(shell bash deploy/bootstrap.sh)
PY = $(VENV)/bin/python

.PHONY: setup demo test unit lint kafka-start kafka-stop

setup:
	@echo "environment: $(VENV)"

# generate events → train a small model on them (~1 min on 2 cores) → replay them with it into a
# one-row-per-user Parquet table → the model's next-item metrics beside most-popular and
# item-transitions → one user's recommendations.
demo:
	@mkdir -p out && rm -rf out/state
	$(PY) -m stream_app generate --out out/events.jsonl --users 500 --items 2000 --events 50000 --malformed 0.01
	$(PY) -m stream_app train --data out/events.jsonl --format jsonl --out out/model.ckpt \
		--epochs 3 --lr 0.005 --max-minutes 1.5 --no-progress
	$(PY) -m stream_app replay --events out/events.jsonl --model out/model.ckpt --state out/state \
		--out out/users.parquet --latest-only --dead-letter out/dead-letter.jsonl
	$(PY) -m stream_app evaluate --model out/model.ckpt --data out/events.jsonl --format jsonl --baselines pop,cooc
	$(PY) -m stream_app recommend u1 --state out/state --model out/model.ckpt --k 10

test:
	bash deploy/run-tests.sh

unit:
	$(PY) -m pytest -q -m "not integration"

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

kafka-start:
	bash deploy/kafka/kafka.sh start

kafka-stop:
	bash deploy/kafka/kafka.sh stop
