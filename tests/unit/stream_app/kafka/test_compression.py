"""Codec checks: a producer codec the client cannot use is refused by name; a worker without one says so."""

from __future__ import annotations

import pytest
from aiokafka import codec as aiokafka_codec
from kafka import codec as kafka_python_codec
from typer.testing import CliRunner

from stream_app.cli import app
from stream_app.core.settings import Settings
from stream_app.kafka.compression import (
    aiokafka_missing,
    check_producer_codec,
    codec_name,
    compression_type,
    consumer_codec_warning,
    kafka_python_missing,
)


def settings(codec: str) -> Settings:
    return Settings.from_env({"RIPPLE_PRODUCER_COMPRESSION": codec})


def test_this_environment_has_every_codec_for_both_clients():
    assert aiokafka_missing() == [] and kafka_python_missing() == []
    assert consumer_codec_warning() is None
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        check_producer_codec(settings(codec))
        check_producer_codec(settings(codec), "kafka-python")


def test_producer_compression_maps_none_to_no_codec():
    assert compression_type(settings("none")) is None
    assert compression_type(settings("zstd")) == "zstd"
    assert [codec_name(i) for i in range(5)] == ["none", "gzip", "snappy", "lz4", "zstd"]
    assert codec_name(7) == "unknown (0x07)"


def test_without_cramjam_the_worker_names_what_it_cannot_read_and_refuses_to_compress(monkeypatch):
    monkeypatch.setattr(aiokafka_codec, "cramjam", None)
    assert aiokafka_missing() == ["snappy", "lz4", "zstd"]
    warning = consumer_codec_warning()
    assert warning is not None and "cramjam" in warning and "missing_codec" in warning
    with pytest.raises(ValueError, match=r"RIPPLE_PRODUCER_COMPRESSION=lz4.*cramjam"):
        check_producer_codec(settings("lz4"))
    check_producer_codec(settings("gzip"))
    check_producer_codec(settings("lz4"), "kafka-python")  # the CLI has its own libraries


def test_without_lz4_ripple_produce_refuses_before_connecting(monkeypatch, tmp_path):
    for name in ("lz4", "lz4f", "lz4framed"):
        monkeypatch.setattr(kafka_python_codec, name, None)
    assert kafka_python_missing() == ["lz4"]
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "ts": 1767225600}\n')
    monkeypatch.setenv("RIPPLE_PRODUCER_COMPRESSION", "lz4")
    monkeypatch.setenv("RIPPLE_BROKER", "kafka://127.0.0.1:1")  # nothing listens: the check comes first
    result = CliRunner().invoke(app, ["produce", "--events", str(events)])
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "RIPPLE_PRODUCER_COMPRESSION=lz4" in text and "kafka-python" in text and "pip install" in text, text
