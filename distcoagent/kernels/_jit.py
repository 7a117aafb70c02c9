"""The two ways kernels are compiled: cached on disk, IEEE arithmetic in source order.

``error_model="numpy"``: a float division by zero gives inf or nan as in numpy instead of raising;
no ``fastmath``: no reassociation, no fused multiply-add, so sums and products round as written.
``inline``: per-row pieces (a draw, a policy's forward, a trace update) are inlined into the loop
that calls them.  A kernel called from Python allocates nothing (its caller passes the buffers),
so it is compiled without numba's reference counting (``_nrt=False``): otherwise every array
handed to an inlined piece costs two atomic operations per row, a third of a kernel's time.

numba is imported when a kernel first runs, not when this package is imported: the decorators
return a ``Kernel``, which on its first call makes every kernel a numba dispatcher at once
(``materialize``) and puts the dispatchers where the kernel modules' names were, so that numba
finds a kernel's callees there and Python callers reach numba directly.  Until then a ``Kernel``
may run a version compiled ahead of time (``prebuilt``) for the argument types it is called with:
a process that finds all it runs there never imports numba (about 100 MiB less).
"""
from __future__ import annotations

import functools
import hashlib
import sys
import threading
from pathlib import Path

REGISTRY: dict[str, "Kernel"] = {}  # every kernel, by "module.name" (``dispatcher``: numba's)
_lock = threading.Lock()
_materialized = False
route = None  # ``prebuilt.run`` while prebuilt kernels are loaded (or only they may run): calls go through it


class Kernel:
    """A kernel before numba compiles it: ``options`` are ``njit``'s; ``prebuilt`` maps an argument-type
    key (``prebuilt.key_of``) to a version compiled ahead of time."""

    def __init__(self, fn, options: dict):
        self.fn, self.options = fn, options
        self.name = f"{fn.__module__}.{fn.__name__}"
        self.__name__, self.__qualname__, self.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        self.__module__ = fn.__module__
        self.dispatcher = None
        self.prebuilt: dict | None = None
        REGISTRY[self.name] = self

    def __call__(self, *args):
        if route is not None:
            return route(self, self.prebuilt or {}, args)
        return jit(self)(*args)

    @property
    def py_func(self):
        return self.fn

    @property
    def signatures(self) -> list:
        return [] if self.dispatcher is None else self.dispatcher.signatures

    @property
    def overloads(self) -> dict:
        return {} if self.dispatcher is None else self.dispatcher.overloads

    def __reduce__(self):  # pickled by name, as a module-level function is
        return _by_name, (self.name,)

    def __repr__(self) -> str:
        return f"<kernel {self.name}{' (compiled)' if self.dispatcher is not None else ''}>"


def _by_name(name: str):
    module, attr = name.rsplit(".", 1)
    __import__(module)
    return getattr(sys.modules[module], attr)


def _decorate(fn, options: dict):
    with _lock:  # not while ``materialize`` walks the registry
        k = Kernel(fn, options)
        if _materialized:  # a kernel module imported after numba took over: a dispatcher right away
            k.dispatcher = _compile(fn, options)
            return k.dispatcher
        return k


def kernel(fn, nogil: bool = False):
    """A kernel called from Python: arrays in, numbers out, nothing allocated."""
    return _decorate(fn, {"nogil": nogil})


def kernel_nogil(fn):
    """A kernel that releases the GIL while it runs (Python threads run it at once on disjoint rows)."""
    return kernel(fn, nogil=True)


def inline(fn):
    """A per-row piece of a kernel, compiled into every kernel that calls it."""
    return _decorate(fn, {"inline": True})


def _compile(fn, options: dict):
    import numba
    from numba.core.cpu import CPUTargetOptions

    if options.get("inline"):
        return numba.njit(cache=True, error_model="numpy", inline="always")(fn)
    no_refcount = {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}
    return numba.njit(cache=True, error_model="numpy", nogil=options["nogil"], **no_refcount)(fn)


def jit(k: Kernel):
    """The numba dispatcher of ``k`` (every kernel becomes one the first time any is asked for)."""
    if not _materialized:  # (not ``k.dispatcher``: it is set before the modules' names are)
        materialize()
    return k.dispatcher


def materialize() -> None:
    """Import numba and make every kernel a dispatcher (compiled or loaded from the cache on its first
    call, as numba does); the kernel modules' names then name the dispatchers."""
    global _materialized
    with _lock:
        if _materialized:
            return
        try:
            import numba  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"numba is installed but does not import ({exc}); DISTCOAGENT_KERNELS=0 runs "
                               f"numpy instead") from None
        from . import _import_numba_numpy_support

        _import_numba_numpy_support()
        for k in REGISTRY.values():
            k.dispatcher = _compile(k.fn, k.options)
        for name, module in list(sys.modules.items()):
            if name.startswith(__package__ + ".") and module is not None:
                for attr, value in list(vars(module).items()):
                    if isinstance(value, Kernel) and value.dispatcher is not None:
                        setattr(module, attr, value.dispatcher)
        _materialized = True


def materialized() -> bool:
    """numba has taken over in this process (it is imported and every kernel is a dispatcher)."""
    return _materialized


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """The digest of every kernel source of this package (a compiled kernel depends on all of them); read
    once per process, as numba's cache stamp is."""
    here = Path(__file__).parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()


def _drop_stale_cache() -> None:
    """numba's cache checks only the file of the function it compiled, not the kernels inlined into
    it from other files: when any kernel source changed, drop every cached kernel (they recompile)."""
    digest = source_digest()
    cache = Path(__file__).parent / "__pycache__"
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
