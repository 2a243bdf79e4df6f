# Two commands for a newcomer: `make demo` (embedded default, no Kafka) and `make test`.
SHELL := /bin/bash
VENV = $(shell bash deploy/bootstrap.sh)
PY = $(VENV)/bin/python

.PHONY: setup demo test unit lint kafka-start kafka-stop

setup:
	@echo "environment: $(VENV)"

demo:
	@mkdir -p out
	$(PY) -m stream_app generate --out out/events.jsonl --users 500 --items 2000 --events 50000 --malformed 0.01
	$(PY) -m stream_app replay --events out/events.jsonl --out out/embeddings.jsonl --state out/state \
		--dead-letter out/dead-letter.jsonl --from-start

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
