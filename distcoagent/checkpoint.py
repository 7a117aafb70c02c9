"""Checkpoints: a whole run's state (``Engine.state()``) in one file, written so that nothing is lost.

File format (``checkpoint.msgpack`` in the run directory), msgpack, no pickle::

    {"format": "distcoagent.checkpoint/1", "spec_hash": <sha256 of the run's spec>,
     "sha256": <sha256 of "state">, "state": <msgpack bytes of the state>}

Arrays inside the state are stored as dtype, shape and raw bytes (``serialize``).  A
checkpoint is written atomically: a temporary file in the same folder, flushed and
fsynced, then ``os.replace`` (and the folder fsynced), so a crash at any moment
leaves either the old checkpoint or the new one, never half of one.  It is read with
msgpack's limits (``max_buffer_size``, string map keys only) and checked: format,
checksum (a flipped bit is caught), and the spec's hash (a checkpoint of another run
is refused) — each with one clear error, leaving the run directory untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import msgpack

from . import serialize

FORMAT = "distcoagent.checkpoint/1"
FILE = "checkpoint.msgpack"
MAX_BYTES = 16 * 2**30  # refuse to read anything larger (a corrupt length or a wrong file)


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and why."""


def spec_hash(config: dict) -> str:
    """A stable hash of what determines a run's numbers (network, environment, trials, seed ...)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def write(run_dir: str | Path, state: dict, config_hash: str) -> Path:
    """Write ``state`` as the run's checkpoint, atomically; returns its path."""
    run_dir = Path(run_dir)
    body = serialize.dumps(state)
    blob = msgpack.packb({"format": FORMAT, "spec_hash": config_hash, "sha256": hashlib.sha256(body).hexdigest(),
                          "state": body}, use_bin_type=True)
    path = run_dir / FILE
    write_atomically(path, blob)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole, or what it held before: a temporary file beside it, fsynced, then
    renamed over it (and the folder fsynced); the temporary file is removed if anything fails."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read(path: str | Path, config_hash: str | None = None) -> dict:
    """The state in checkpoint ``path``; CheckpointError if it is not a sound checkpoint of this run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise CheckpointError(f"checkpoint: {path} is {size / 2**30:.1f} GiB, more than any checkpoint can be")
    data = path.read_bytes()
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(data) + 1)
        unpacker.feed(data)
        outer = unpacker.unpack()
    except Exception as error:  # msgpack raises several types for truncated or garbled data
        reason = "truncated" if isinstance(error, msgpack.OutOfData) else f"not msgpack: {error}"
        raise CheckpointError(f"checkpoint: {path} is damaged ({reason})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        found = outer.get("format") if isinstance(outer, dict) else type(outer).__name__
        if not (isinstance(found, str) and found.startswith("distcoagent.checkpoint/")):
            raise CheckpointError(f"checkpoint: {path} is damaged or not a checkpoint (its format field is "
                                  f"{found!r}, expected {FORMAT!r})")
        raise CheckpointError(f"checkpoint: {path} has format {found!r}, expected {FORMAT!r} (written by another "
                              "version of distcoagent)")
    body = outer.get("state")
    if not isinstance(body, bytes) or hashlib.sha256(body).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"checkpoint: {path} is damaged (its checksum does not match its content)")
    if config_hash is not None and outer.get("spec_hash") != config_hash:
        raise CheckpointError(f"checkpoint: {path} belongs to another run (its spec differs from this run's: "
                              "network, environment, trials, envs_per_trial, seed, micro_batches or episodes)")
    try:
        return serialize.loads(body)
    except Exception as error:
        raise CheckpointError(f"checkpoint: {path} is damaged ({error})") from None
