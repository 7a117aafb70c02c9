"""Coagent and network state to bytes and back with msgpack: no pickle, no code execution.

Arrays are stored as ``{"__nd__": True, "dtype", "shape", "data"}``; everything else
must be plain (dict, list, str, int, float, bool, None).

>>> import numpy as np
>>> state = {"params": {"W": np.arange(6.0).reshape(2, 3)}, "counters": {"executions": 3}}
>>> back = loads(dumps(state))
>>> back["params"]["W"].shape, back["counters"]["executions"]
((2, 3), 3)
"""
from __future__ import annotations

import msgpack
import numpy as np

_ALLOWED_DTYPES = {"float64", "float32", "int64", "int32", "bool", "uint64", "uint8"}


def _encode(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in _ALLOWED_DTYPES:
            raise TypeError(f"cannot serialise an array of dtype {obj.dtype}")
        return {"__nd__": True, "dtype": obj.dtype.name, "shape": list(obj.shape),
                "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _decode(obj):
    if obj.get("__nd__"):
        if obj["dtype"] not in _ALLOWED_DTYPES:
            raise ValueError(f"state: unexpected array dtype {obj['dtype']!r}")
        return np.frombuffer(obj["data"], dtype=obj["dtype"]).reshape(obj["shape"]).copy()
    return obj


def dumps(state) -> bytes:
    """Serialise a state (nested dicts/lists of arrays and plain values)."""
    return msgpack.packb(state, default=_encode, use_bin_type=True)


def loads(data: bytes):
    """Inverse of ``dumps``."""
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)


class DamagedStream(ValueError):
    """Bytes that are not values ``dumps`` wrote: damage, not a value cut short at the end."""


def _values_and_ends(stream):
    """(value, offset just after it) for each value ``dumps`` wrote into ``stream``: a last one cut short (a full
    disk, a killed writer) ends the stream; bytes that do not decode raise DamagedStream, naming the byte
    where the damage starts (what follows it cannot be read)."""
    unpacker = msgpack.Unpacker(stream, object_hook=_decode, raw=False, strict_map_key=False)
    good = 0
    try:
        for value in unpacker:
            good = unpacker.tell()
            yield value, good
    except msgpack.OutOfData:
        return
    except ValueError as error:  # msgpack's FormatError, StackError, ExtraData; a UnicodeDecodeError
        raise DamagedStream(f"damaged at byte {good} ({type(error).__name__}); what follows cannot be read") \
            from None


def iter_loads(stream):
    """The values ``dumps`` wrote one after another into a binary ``stream`` (see ``_values_and_ends``)."""
    for value, _ in _values_and_ends(stream):
        yield value


def whole_values_end(stream) -> int | None:
    """The offset just after the last value of ``stream`` that decodes whole (where a value cut short at the
    end starts), or None if the stream is damaged before its end (cutting there would lose what follows)."""
    end = 0
    try:
        for _, end in _values_and_ends(stream):
            pass
    except DamagedStream:
        return None
    return end
