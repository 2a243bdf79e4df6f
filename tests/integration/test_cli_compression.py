"""`ripple produce` compresses with RIPPLE_PRODUCER_COMPRESSION and `ripple tail` reads every codec (kafka-python)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stream_app.cli import app
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.produce import produce_events
from tests.conftest import write_jsonl
from tests.integration.kafka_tools import batch_codecs


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_compresses_and_tail_reads_back_every_codec(broker, unique, tmp_path, codec, monkeypatch):
    lines = list(generate_events(GeneratorSpec(users=10, items=50, events=200, seed=3)))
    events = write_jsonl(tmp_path / "events.jsonl", lines)
    topic = f"cli-{codec}-{unique}"
    env = {
        "RIPPLE_BROKER": f"kafka://{broker}",
        "RIPPLE_INPUT_TOPIC": topic,
        "RIPPLE_OUTPUT_TOPIC": f"out-{unique}",
        "RIPPLE_DEAD_LETTER_TOPIC": f"dlq-{unique}",
        "RIPPLE_DELETION_TOPIC": f"del-{unique}",
        "RIPPLE_PRODUCER_COMPRESSION": codec,
    }
    summary = produce_events(events, "jsonl", Settings.from_env(env), progress=False)
    assert summary.messages == len(lines)
    # A batch that compression would not shrink (a single small record) goes uncompressed (kafka-python).
    codecs = batch_codecs(broker, topic)
    assert codecs[codec] >= 1 and set(codecs) <= {codec, "none"}, codecs

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["tail", "--topic", topic, "--from-beginning", "--max", str(len(lines))])
    assert result.exit_code == 0, result.output
    assert sorted(result.output.splitlines()) == sorted(line.decode() for line in lines)
