"""Compiled kernels (numba) for the hot paths of a tick, one module per concept.

- ``draws``: the keyed counter-based random draws of ``rng`` (bit for bit the same numbers);
- ``policy``: forward, sample and score of a softmax or bernoulli policy, one row at a time;
- ``traces``: scaled eligibility traces (decay, add, apply, reset) of ``rules.ScaledTraces``;
- ``coagent``: a coagent's ``act``, ``observe`` and ``begin_episode`` over the rows of a batch,
  composed from the three above, for actor-critic (shared or own critic) and frozen rules;
- ``critic``: the shared critic's value and TD(lambda) step;
- ``gridworld``: the native gridworld batch's step;
- ``block``: a block of whole ticks of one micro-batch, trial by trial, from the pieces above
  (``distcoagent.blocks`` drives it for the in-process engine).

Kernels take every array as an argument (state stays in the declared ``FIELDS``, so trials can
be cut out of a batch between calls) and change it in place.  A unit, critic or environment uses
them when ``enabled()``; otherwise, or for kinds of coagent without a kernel, the numpy code runs
(same algorithm, same draws; only the last bits of exp and pow differ).  Set
``DISTCOAGENT_KERNELS=0`` to run numpy everywhere; tests switch with ``disabled()``.  Compiled
code is cached on disk (``cache=True``): ``compile_all()`` compiles or loads every kernel and
says how long it took; ``load(...)`` loads those of the modules named (what the sides of a tick
name with their ``load_kernels``).  numba is imported when a kernel first runs; a study's
processes may run kernels compiled ahead of time instead and never import it (``prebuilt``).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

OFF, ON = ("0", "false", "no", "off"), ("1", "true", "yes", "on", "")
_switched_on = os.environ.get("DISTCOAGENT_KERNELS", "1").strip().lower() not in OFF
SWITCHES = {"DISTCOAGENT_KERNELS": "1 (compiled kernels, the default) or 0 (numpy only)",
            "DISTCOAGENT_PREBUILT": "1 (studies on kernels compiled ahead of time, the default) or 0 (numba only)"}


def check_switch() -> None:
    """``DISTCOAGENT_KERNELS`` and ``DISTCOAGENT_PREBUILT`` are words for on or off (any other value would
    silently mean on)."""
    for name, expected in SWITCHES.items():
        value = os.environ.get(name, "1")
        if value.strip().lower() not in OFF + ON:
            from ..network import SpecError

            raise SpecError(f"{name}: expected {expected}, got {value[:40]!r}")


_available: bool | None = None
_enabled = False  # available and not inside ``disabled()``: what ``enabled()`` returns


def available() -> bool:
    """Kernels can run in this process: not switched off (``DISTCOAGENT_KERNELS=0``, then numba is
    not even imported) and numba imports.  Where kernels compiled ahead of time for this install are
    there (``prebuilt``: built by this numba, so it imported then), numba is only looked for, not
    imported: a process that runs them only never imports it."""
    global _available, _enabled
    if _available is None:
        import importlib.util

        check_switch()  # "maybe" would otherwise mean on, for the Python API as for the command line

        _available = False
        if _switched_on and importlib.util.find_spec("numba") is not None:
            from . import prebuilt

            if prebuilt.may_serve():
                _available = True
            else:
                try:
                    import numba  # noqa: F401
                    _available = True
                except ImportError:
                    pass
                else:
                    _import_numba_numpy_support()
        _enabled = _available
    return _available


def _import_numba_numpy_support() -> None:
    """Import ``numba.np.arraymath`` without its probe of scipy's BLAS.

    numba imports that module when a process first compiles or loads a kernel, and the module asks
    at import whether BLAS is there by importing ``scipy.linalg``: 15-16 MiB resident in every
    process (each Ray actor, each Figure 6 worker), for BLAS that no kernel here uses.  It is imported
    here with ``scipy.linalg`` hidden, then its answer is set to whether ``scipy.linalg`` can be
    imported; numba's ``np.dot`` still imports scipy's BLAS itself when some code compiles it.  Where
    ``scipy.linalg`` is already imported, or the module imports anyway, nothing changes."""
    import importlib.util
    import sys

    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    sys.modules["scipy.linalg"] = None  # an import of it raises ImportError: numba's probe says no BLAS
    try:
        import numba.np.arraymath as arraymath
    except ImportError:
        return
    finally:
        if "scipy.linalg" in sys.modules and sys.modules["scipy.linalg"] is None:
            del sys.modules["scipy.linalg"]
    if hasattr(arraymath, "_HAVE_BLAS"):
        arraymath._HAVE_BLAS = importlib.util.find_spec("scipy.linalg") is not None


def enabled() -> bool:
    """Kernels run where a kernel exists (available, and not inside ``disabled()``)."""
    return _enabled


@contextmanager
def disabled():
    """Run the numpy code everywhere inside this block (tests compare the two)."""
    global _enabled
    available()
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def compile_times() -> dict:
    """Seconds to compile every kernel into an empty cache (a fresh install's first run), and to load
    them from that cache (every later process), each in a fresh interpreter (benchmarks report them)."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    code = "from distcoagent import kernels; print(kernels.compile_all())"
    root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": root}

        def run() -> float:
            return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                        check=True, cwd=tempfile.gettempdir()).stdout.split()[-1])
        return {"compile_cold_s": run(), "compile_cached_s": run()}


def load(*modules: str) -> float:
    """Load now (from numba's cache; compile at worst) the kernels of these modules of this package,
    each once: a process about to run steps calls it first, so no step pays it. Nothing when the
    kernels are off. Returns the seconds it took."""
    if not (available() and enabled()):
        return 0.0
    import importlib

    start = time.perf_counter()
    for name in dict.fromkeys(modules):
        importlib.import_module(f"{__name__}.{name}").warm_up()
    return time.perf_counter() - start


def compile_all() -> float:
    """Compile (or load from the on-disk cache) every kernel; returns the seconds it took."""
    start = time.perf_counter()
    from . import coagent, critic, expected, gridworld

    coagent.warm_up()
    expected.warm_up()
    critic.warm_up()
    gridworld.warm_up()
    from .. import blocks

    blocks.warm_up()
    return time.perf_counter() - start
