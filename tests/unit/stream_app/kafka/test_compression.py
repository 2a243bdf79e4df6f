"""Codec checks: a producer codec the client cannot use is refused by name; a worker without one says so."""

from __future__ import annotations

import pytest
from aiokafka import codec as aiokafka_codec
from kafka import codec as kafka_python_codec
from typer.testing import CliRunner

from stream_app.cli import app
from stream_app.core.settings import Settings
from stream_app.kafka.compression import (
    AIOKAFKA_ENCODERS,
    aiokafka_missing,
    check_producer_codec,
    codec_name,
    compression_type,
    consumer_codec_warning,
    install_compression_level,
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


# ---- compression level of the worker's aiokafka batches ------------------------------------------

ENCODER_MODULES = ("aiokafka.record.default_records", "aiokafka.record._crecords.default_records")
CODEC_IDS = {"gzip": 1, "lz4": 3, "zstd": 4}


@pytest.fixture
def restore_encoders(monkeypatch):
    """Undo install_compression_level after the test (it sets module globals for the whole process)."""
    import importlib

    for module_name in ENCODER_MODULES:
        module = importlib.import_module(module_name)
        for name in AIOKAFKA_ENCODERS:
            monkeypatch.setattr(module, name, getattr(module, name))


def build_batch(builder_module: str, codec: str, values: list[bytes]) -> bytes:
    import importlib

    module = importlib.import_module(builder_module)
    builder = module.DefaultRecordBatchBuilder(
        magic=2, compression_type=CODEC_IDS[codec], is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 22,
    )  # fmt: skip
    for offset, value in enumerate(values):
        stamp = 1_767_225_600_000 + offset  # fixed: a batch's bytes depend on its timestamps
        assert builder.append(offset, timestamp=stamp, key=b"u%d" % offset, value=value, headers=[]) is not None
    return bytes(builder.build())


def read_batch(data: bytes) -> list[bytes]:
    from aiokafka.record.default_records import DefaultRecordBatch

    return [record.value for record in DefaultRecordBatch(data)]


@pytest.mark.parametrize("builder_module", ENCODER_MODULES)
@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd"])
def test_the_level_reaches_both_batch_builders_and_batches_still_read_back(restore_encoders, builder_module, codec):
    import numpy as np

    rng = np.random.default_rng(0)
    values = [b'{"user_id":"u%d","vector":%s}' % (i, str(rng.standard_normal(64).round(5).tolist()).encode())
              for i in range(200)]  # fmt: skip
    own_level = {"gzip": 9, "lz4": 9, "zstd": 3}[codec]  # aiokafka's fixed levels
    assert install_compression_level(1)[-1] == "aiokafka.record._crecords.default_records"
    fast = build_batch(builder_module, codec, values)
    install_compression_level(own_level)
    own = build_batch(builder_module, codec, values)
    install_compression_level(0)
    default = build_batch(builder_module, codec, values)
    assert read_batch(fast) == read_batch(own) == read_batch(default) == values
    assert len(default) == len(own)  # 0 is aiokafka's own level (gzip's header carries a time: sizes, not bytes)
    assert len(fast) != len(own)  # the level reached the builder


def test_the_worker_installs_its_compression_level(restore_encoders, tmp_path):
    from aiokafka.record._crecords import default_records as c_records

    from stream_app.kafka.faust_app import build_app

    build_app(Settings.from_env({"RIPPLE_PRODUCER_COMPRESSION_LEVEL": "5"}, state_dir=str(tmp_path)))
    assert c_records.zstd_encode.keywords == {"level": 5} and c_records.lz4_encode.keywords == {"level": 5}


@pytest.mark.parametrize("value", ["-1", "10"])
def test_a_compression_level_out_of_range_is_refused_with_its_name(value):
    with pytest.raises(ValueError, match="producer_compression_level"):
        Settings.from_env({"RIPPLE_PRODUCER_COMPRESSION_LEVEL": value})
