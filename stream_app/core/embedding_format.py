"""How an embedding record is written (``RIPPLE_EMBEDDING_ENCODING``): the vector as JSON numbers or compact.

``json`` (the default): ``"embedding": [0.0123, -0.4567, ...]``, every float32 of the vector
written as the shortest decimal that reads back as the same double (~21 characters each).

``f32``: the same JSON record, but ``"embedding"`` is a string, the base64 of the vector as
little-endian IEEE-754 float32 (4 bytes per dimension). A reader tells the two apart by the
type of ``"embedding"`` (a list or a string); no other field changes. The model computes in
float32, so the values are exactly the ones ``json`` writes; a 64-dimensional record shrinks
to about 36 %. Decoding::

    # Python
    vector = numpy.frombuffer(base64.b64decode(record["embedding"]), dtype="<f4")

    // Java
    ByteBuffer buf = ByteBuffer.wrap(Base64.getDecoder().decode(embedding)).order(ByteOrder.LITTLE_ENDIAN);
    float[] vector = new float[buf.remaining() / 4];
    buf.asFloatBuffer().get(vector);

:func:`decode_embedding` reads either form.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from stream_app.core.records import UserEmbedding, embedding_decoder, json_encoder

JSON = "json"
F32 = "f32"
F32_ENCODING = "f32le-base64"
"""What a string ``"embedding"`` holds. Reserved: a future encoding would name itself in an
``"embedding_encoding"`` field; a record without one is this."""
E_UNKNOWN_ENCODING = (
    "embedding record has embedding_encoding={found!r}; this Ripple reads {known!r} (and plain JSON numbers). "
    "Upgrade the reader to the worker's version."
)


def pack(vector: Any) -> str:
    """The vector as base64 of little-endian float32.

    >>> pack([1.0, -2.5])
    'AACAPwAAIMA='
    """
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def unpack(text: str) -> list[float]:
    """Inverse of :func:`pack`.

    >>> unpack('AACAPwAAIMA=')
    [1.0, -2.5]
    """
    return np.frombuffer(base64.b64decode(text), dtype="<f4").tolist()


def embedding_record(emb: UserEmbedding, encoding: str = JSON) -> dict[str, Any]:
    """The record as JSON-ready builtins in ``encoding`` (the web views answer with this)."""
    record: dict[str, Any] = msgspec.to_builtins(emb)
    if encoding == F32:
        record["embedding"] = pack(emb.embedding)
    elif encoding != JSON:
        raise ValueError(f"unknown embedding encoding {encoding!r}: use {JSON!r} or {F32!r}")
    return record


def encode_f32(emb: UserEmbedding) -> bytes:
    return json_encoder.encode(embedding_record(emb, F32))


def embedding_encoder(encoding: str) -> Callable[[UserEmbedding], bytes]:
    """``UserEmbedding`` → record bytes in ``encoding`` (``json``: exactly what Ripple always wrote)."""
    if encoding == JSON:
        return json_encoder.encode
    if encoding == F32:
        return encode_f32
    raise ValueError(f"unknown embedding encoding {encoding!r}: use {JSON!r} or {F32!r}")


def decode_embedding(data: bytes | str) -> UserEmbedding:
    """A record of either encoding → ``UserEmbedding`` with the vector as floats.

    >>> emb = UserEmbedding("u1", [0.5, -1.0], "m", 3, "e3", 1.0, 2.0, 2)
    >>> decode_embedding(encode_f32(emb)) == decode_embedding(json_encoder.encode(emb)) == emb
    True
    """
    try:
        return embedding_decoder.decode(data)
    except msgspec.ValidationError:
        record = msgspec.json.decode(data)
        if not (isinstance(record, dict) and isinstance(record.get("embedding"), str)):
            raise
    encoding = record.pop("embedding_encoding", F32_ENCODING)
    if encoding != F32_ENCODING:
        raise ValueError(E_UNKNOWN_ENCODING.format(found=encoding, known=F32_ENCODING))
    record["embedding"] = unpack(record["embedding"])
    return msgspec.convert(record, UserEmbedding)


def as_json(data: bytes) -> bytes:
    """Any embedding record → the ``json`` encoding of it (``ripple tail --decode``)."""
    return json_encoder.encode(decode_embedding(data))


def readable(value: bytes) -> bytes:
    """An embedding record with its vector as JSON numbers; anything else unchanged."""
    try:
        return as_json(value)
    except (ValueError, TypeError):  # msgspec's errors are ValueErrors: not an embedding record
        return value
