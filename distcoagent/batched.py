"""Arrays that declare their batch axis, so that compaction and checkpoints cannot forget one.

Everything that evolves during a run holds arrays with a leading axis over either the
*trials* of a batch (``TRIAL``: parameters, and traces of shape ``(P, E, ...)``) or its
*environments* (``ENV``: ``B = P * E`` rows).  An object that holds such arrays says so
in a class attribute ``FIELDS = {"attribute": TRIAL | ENV | FIELDS_OF}``:

- ``TRIAL`` / ``ENV``: the attribute is one array with that leading axis;
- ``FIELDS_OF``: the attribute is an ``ArrayDict`` whose entries declare their own axes.

``batch_fields(obj)`` lists them; ``shrink``/``expand`` (dropping finished trials) and
``save``/``load`` (checkpoints) walk exactly that list.  Arrays that never change and
have no batch axis (a transition table) are named in ``CONSTANTS``.  ``undeclared(obj)``
lists array attributes in neither: a test asserts it is empty for every holder.

>>> d = ArrayDict()
>>> d.add("w", np.zeros((2, 3)), TRIAL)
>>> d.add("scale", np.ones(4), ENV)
>>> sorted(d.axes.items())
[('scale', 'env'), ('w', 'trial')]
"""
from __future__ import annotations

import numpy as np

TRIAL, ENV, FIELDS_OF = "trial", "env", "fields"
AXES = (TRIAL, ENV)


class ArrayDict(dict):
    """A dict of arrays, each with a declared leading axis (``TRIAL`` or ``ENV``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.axes: dict[str, str] = {}

    def add(self, name: str, array: np.ndarray, axis: str) -> None:
        if axis not in AXES:
            raise ValueError(f"{name}: axis must be one of {AXES}, got {axis!r}")
        self[name] = array
        self.axes[name] = axis

    def like(self, values: dict) -> "ArrayDict":
        """A new ArrayDict with these values and this one's axes (values must have the same keys)."""
        out = ArrayDict(values)
        out.axes = {k: self.axes[k] for k in values}
        return out

    def copy(self) -> "ArrayDict":
        return self.like({k: v.copy() for k, v in self.items()})


def batch_fields(obj) -> dict[str, str]:
    """The declared fields of ``obj``: attribute name -> TRIAL, ENV or FIELDS_OF."""
    return dict(getattr(type(obj), "FIELDS", {}))


def undeclared(obj) -> list[str]:
    """Array attributes of ``obj`` (or entries of its ArrayDicts) that declare no axis."""
    declared = {**batch_fields(obj), **{name: None for name in getattr(type(obj), "CONSTANTS", ())}}
    missing = [name for name, value in vars(obj).items()
               if isinstance(value, np.ndarray) and value.ndim and name not in declared]
    for name, kind in declared.items():
        if kind == FIELDS_OF:
            value = getattr(obj, name)
            missing += [f"{name}.{k}" for k in value if k not in value.axes]
    return missing


def env_rows(trials: np.ndarray, envs_per_trial: int) -> np.ndarray:
    """Environment rows of the given trials, trial-major."""
    return (trials[:, None] * envs_per_trial + np.arange(envs_per_trial)).ravel()


def _index(axis: str, trials: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return trials if axis == TRIAL else rows


def shrink(obj, trials: np.ndarray, envs_per_trial: int) -> dict:
    """Cut every declared field of ``obj`` down to ``trials``; returns the full-size originals."""
    rows = env_rows(trials, envs_per_trial)
    saved = {}
    for name, kind in batch_fields(obj).items():
        value = getattr(obj, name)
        saved[name] = value
        if kind == FIELDS_OF:
            setattr(obj, name, value.like({k: v[_index(value.axes[k], trials, rows)] for k, v in value.items()}))
        elif value is not None:
            setattr(obj, name, value[_index(kind, trials, rows)])
    return saved


def expand(obj, saved: dict, trials: np.ndarray, envs_per_trial: int, full_trials: int) -> None:
    """Write ``obj``'s cut fields back into the full-size ``saved`` originals and put those back.

    A field that was None when cut and holds an array now (say, feedback not yet delivered) gets
    a full-size array of zeros for the trials cut out: they had finished and take no part.
    """
    rows = env_rows(trials, envs_per_trial)
    for name, kind in batch_fields(obj).items():
        full, part = saved[name], getattr(obj, name)
        if full is None and part is not None and kind != FIELDS_OF:
            size = full_trials if kind == TRIAL else full_trials * envs_per_trial
            full = np.zeros((size,) + part.shape[1:], dtype=part.dtype)
        # copies: two holders may have shared one array when it was cut (an observation held by
        # both sides), and each must get back its own rows
        if kind == FIELDS_OF:
            for k in part:
                if k not in full:  # an entry created while cut: cannot happen for declared state
                    raise KeyError(f"{type(obj).__name__}.{name}.{k}: created while trials were cut")
            full = full.like({k: v.copy() for k, v in full.items()})
            for k, v in part.items():
                full[k][_index(full.axes[k], trials, rows)] = v
        elif full is not None:
            full = full.copy()
            full[_index(kind, trials, rows)] = part
        setattr(obj, name, full)


def save(obj) -> dict:
    """Copies of every declared field (ArrayDicts as plain dicts): msgpack-able via ``serialize``."""
    out = {}
    for name, kind in batch_fields(obj).items():
        value = getattr(obj, name)
        out[name] = ({k: np.array(v) for k, v in value.items()} if kind == FIELDS_OF
                     else None if value is None else np.array(value))
    return out


def load(obj, state: dict, where: str) -> None:
    """Put ``state`` (from ``save``) back into ``obj``, checking every field's name, dtype and shape."""
    fields = batch_fields(obj)
    missing = set(fields) - set(state)
    if missing:
        raise ValueError(f"{where}: state lacks {sorted(missing)}")
    for name, kind in fields.items():
        current, value = getattr(obj, name), state[name]
        if kind == FIELDS_OF:
            if set(value) != set(current):
                raise ValueError(f"{where}.{name}: entries {sorted(value)}, expected {sorted(current)}")
            setattr(obj, name, current.like({k: _checked(current[k], value[k], f"{where}.{name}.{k}")
                                             for k in current}))
        elif current is None or value is None:
            if (current is None) != (value is None):
                raise ValueError(f"{where}.{name}: expected {'nothing' if current is None else 'an array'}")
        else:
            setattr(obj, name, _checked(current, value, f"{where}.{name}"))


def _checked(current: np.ndarray, value, where: str) -> np.ndarray:
    value = np.asarray(value)
    if value.shape != current.shape:
        raise ValueError(f"{where}: shape {value.shape}, expected {current.shape}")
    if value.dtype != current.dtype:
        raise ValueError(f"{where}: dtype {value.dtype}, expected {current.dtype}")
    return np.array(value)
