"""The two ways kernels are compiled: cached on disk, IEEE arithmetic in source order.

``error_model="numpy"``: a float division by zero gives inf or nan as in numpy instead of raising;
no ``fastmath``: no reassociation, no fused multiply-add, so sums and products round as written.
``inline``: per-row pieces (a draw, a policy's forward, a trace update) are inlined into the loop
that calls them.  A kernel called from Python allocates nothing (its caller passes the buffers),
so it is compiled without numba's reference counting (``_nrt=False``): otherwise every array
handed to an inlined piece costs two atomic operations per row, a third of a kernel's time.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numba
from numba.core.cpu import CPUTargetOptions

_NO_REFCOUNT = {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}


def kernel(fn, nogil: bool = False):
    """A kernel called from Python: arrays in, numbers out, nothing allocated."""
    return numba.njit(cache=True, error_model="numpy", nogil=nogil, **_NO_REFCOUNT)(fn)


def kernel_nogil(fn):
    """A kernel that releases the GIL while it runs (Python threads run it at once on disjoint rows)."""
    return kernel(fn, nogil=True)


def inline(fn):
    """A per-row piece of a kernel, compiled into every kernel that calls it."""
    return numba.njit(cache=True, error_model="numpy", inline="always")(fn)


def _drop_stale_cache() -> None:
    """numba's cache checks only the file of the function it compiled, not the kernels inlined into
    it from other files: when any kernel source changed, drop every cached kernel (they recompile)."""
    here = Path(__file__).parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()
    cache = here / "__pycache__"
    stamp = cache / "kernels-source.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest:
            return
        cache.mkdir(exist_ok=True)
        for path in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            path.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only install: numba keeps its cache elsewhere
        pass


_drop_stale_cache()
