"""Kafka compression codecs: which ones this process can read and write, and what to do when one is missing.

The worker's Kafka clients (aiokafka, through Faust) need ``cramjam`` for snappy, lz4 and
zstd; the CLI's (kafka-python) need ``python-snappy``, ``lz4`` and ``zstandard``. All are
pinned in ``pyproject.toml``. gzip is in the standard library. A producer configured with a
codec its client cannot use is refused at start-up with :data:`E_PRODUCER_CODEC`; a consumer
that meets a batch it cannot decompress skips and dead-letters it (``stream_app/kafka/undecodable.py``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from stream_app.core.settings import COMPRESSION_TYPES, Settings

log = logging.getLogger(__name__)

CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
"""The codec ids of a record batch's attributes (its lowest three bits)."""
AIOKAFKA_LIBRARY = {"snappy": "cramjam", "lz4": "cramjam", "zstd": "cramjam"}
KAFKA_PYTHON_LIBRARY = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}

E_PRODUCER_CODEC = (
    "RIPPLE_PRODUCER_COMPRESSION={codec}, but {client} cannot compress {codec} in this Python environment "
    "({library} is not importable). Fix: install {library} (pinned in pyproject.toml: pip install -e .) "
    "or set RIPPLE_PRODUCER_COMPRESSION to a codec it has (none and gzip need no library)."
)
W_CONSUMER_CODECS = (
    "this worker cannot decompress {codecs} ({libraries} not importable): record batches compressed with "
    "{them} are skipped and dead-lettered (reason missing_codec) instead of processed. Fix: install "
    "{libraries} (pinned in pyproject.toml: pip install -e .) and restart the worker."
)


def codec_name(codec_id: int) -> str:
    """``codec_name(3) == 'lz4'``; unknown ids read ``'unknown (0x07)'``."""
    return CODEC_NAMES.get(codec_id, f"unknown ({codec_id:#04x})")


def aiokafka_missing() -> list[str]:
    """Codecs the worker's aiokafka clients cannot use (compress or decompress) in this process."""
    from aiokafka import codec

    checks = {"snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
    return [name for name, available in checks.items() if not available()]


def kafka_python_missing() -> list[str]:
    """Codecs the CLI's kafka-python clients cannot use in this process."""
    from kafka import codec

    checks = {"snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
    return [name for name, available in checks.items() if not available()]


def compression_type(settings: Settings) -> str | None:
    """The ``compression_type`` argument of aiokafka and kafka-python producers (``None``: uncompressed)."""
    codec = settings.producer_compression
    assert codec in COMPRESSION_TYPES, codec  # Settings validated it
    return None if codec == "none" else codec


def check_producer_codec(settings: Settings, client: str = "aiokafka") -> None:
    """Refuse a producer codec that the client (``aiokafka``: the worker; ``kafka-python``: the CLI) lacks."""
    codec = settings.producer_compression
    if client == "aiokafka":
        missing, libraries = aiokafka_missing(), AIOKAFKA_LIBRARY
    else:
        missing, libraries = kafka_python_missing(), KAFKA_PYTHON_LIBRARY
    if codec in missing:
        raise ValueError(E_PRODUCER_CODEC.format(codec=codec, client=client, library=libraries[codec]))


def consumer_codec_warning() -> str | None:
    """The start-up warning of a worker that cannot decompress every codec (``None`` when it can)."""
    missing = aiokafka_missing()
    if not missing:
        return None
    libraries = ", ".join(sorted({AIOKAFKA_LIBRARY[c] for c in missing}))
    return W_CONSUMER_CODECS.format(
        codecs=", ".join(missing), libraries=libraries, them="it" if len(missing) == 1 else "them"
    )


AIOKAFKA_ENCODERS = ("gzip_encode", "lz4_encode", "zstd_encode")
"""The names aiokafka's record batch builders call to compress a batch (``aiokafka.record``)."""


def aiokafka_encoders(level: int) -> dict[str, Callable[[bytes], bytes]]:
    """aiokafka's gzip, lz4 and zstd encoders at ``level`` (0: aiokafka's own levels: zstd 3, lz4 9, gzip 9)."""
    from aiokafka import codec

    if level == 0:
        return {name: getattr(codec, name) for name in AIOKAFKA_ENCODERS}
    return {
        "gzip_encode": functools.partial(codec.gzip_encode, compresslevel=level),
        "lz4_encode": functools.partial(codec.lz4_encode, level=level),
        "zstd_encode": functools.partial(codec.zstd_encode, level=level),
    }


def install_compression_level(level: int) -> list[str]:
    """Make this process's aiokafka record batch builders compress at ``level``; the modules changed.

    aiokafka compresses a batch with ``zstd_encode(data)`` (and ``lz4_encode``, ``gzip_encode``)
    at fixed levels and has no option for it: zstd 3, and lz4 9 — LZ4's slow high-compression
    mode, 45 µs per embedding against 6 µs at level 1. Both batch builders (the C one the worker
    uses and the pure-Python fallback) look these names up in their module when they build a
    batch, so this sets them there. Process-wide, like aiokafka's own choice; the broker and
    every consumer read any level.
    """
    import aiokafka.record.default_records as python_records

    modules = [python_records]
    try:
        from aiokafka.record._crecords import default_records as c_records
    except ImportError:  # aiokafka without its C extension: the Python builder is the one in use
        pass
    else:
        modules.append(c_records)
    encoders = aiokafka_encoders(level)
    changed = []
    for module in modules:
        if not all(hasattr(module, name) for name in AIOKAFKA_ENCODERS):
            log.warning(
                "RIPPLE_PRODUCER_COMPRESSION_LEVEL=%d is not applied to %s: this aiokafka version does not "
                "call %s there; batches keep aiokafka's own levels",
                level, module.__name__, ", ".join(AIOKAFKA_ENCODERS),
            )  # fmt: skip
            continue
        for name, encoder in encoders.items():
            setattr(module, name, encoder)
        changed.append(module.__name__)
    return changed
