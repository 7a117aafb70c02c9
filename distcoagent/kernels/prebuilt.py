"""Kernels compiled ahead of time for the argument types a study calls them with (numba's ``pycc``).

A process that runs a numba kernel holds numba and LLVM: about 100 MiB before its first number.  A
study of many processes (Figure 6's workers) needs only a handful of kernels, each for one set of
argument types.  ``prepare(fn, *args)`` runs a small piece of the study (trial 0's first episode)
with prebuilt kernels only; if one is missing, a subprocess runs the same piece with numba, compiles
every kernel version it used into an extension module (``pycc``, same flags: numpy's error model, no
fast-math, no reference counting, the GIL released where the kernel releases it; generic x86-64 code,
so the module runs on any CPU of the architecture) and writes it, with a manifest of its argument
types, under ``folder()``.  Processes then call those versions by the types of the arguments they
pass (``key_of``: a call of other types goes to numba, the same numbers), and never import numba.

The module is built once per install and kernel source (about 20 s: numba compiles the kernels, then
LLVM writes the module and a C compiler links it); it is found again by later studies.  Without a C
compiler, or with ``DISTCOAGENT_PREBUILT=0``, studies run on numba as before.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import OFF, _jit

FAILED = "failed.txt"  # in a stamp's folder: the build failed there once (why); it is not tried again


class Missing(BaseException):
    """A kernel was called with types no prebuilt version has, while only prebuilt ones may run (a
    ``BaseException``: no handler of the engine's turns it into another error)."""


_strict = False
_loaded: set[str] = set()  # manifests loaded in this process
_failed_here = False  # a build failed in this process: not tried again here (each try costs seconds)


# ---------------------------------------------------------------------- argument types
def key_of(value):
    """The type of an argument as numba's ``typeof`` sees it, as a hashable key: arrays by dtype, ndim,
    layout and writable (numba's ``typeof`` ignores alignment); tuples element by element; scalars by
    numba's name.  Anything else (structured dtypes among them) gets a key no version has."""
    if isinstance(value, np.ndarray):
        if value.dtype.fields is not None or value.dtype.kind not in "biuf":
            return ("?", str(value.dtype))
        flags = value.flags
        layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
        return ("a", value.dtype.str, value.ndim, layout, bool(flags.writeable))
    if isinstance(value, tuple):
        return ("t",) + tuple(key_of(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, int):
        return "int64" if -2 ** 63 <= value < 2 ** 63 else "uint64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, np.generic):
        return value.dtype.name
    return ("?", type(value).__qualname__)  # no prebuilt version takes it


def key_of_type(t):
    """``key_of`` for a numba type (what a prebuilt version was compiled for)."""
    from numba.core import types
    from numba.np.numpy_support import as_dtype

    if isinstance(t, types.Array) and isinstance(t.dtype, (types.Boolean, types.Integer, types.Float)):
        return ("a", as_dtype(t.dtype).str, t.ndim, t.layout, bool(t.mutable))
    if isinstance(t, (tuple, types.BaseTuple)):  # a signature's arguments, or a tuple argument
        return ("t",) + tuple(key_of_type(x) for x in (t if isinstance(t, tuple) else t.types))
    if isinstance(t, (types.Boolean, types.Integer, types.Float)):
        return str(t)
    raise TypeError(f"no prebuilt key for numba type {t}")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def run(kernel, table: dict, args: tuple):
    """Call ``kernel`` on ``args``: its prebuilt version for their types, else numba's."""
    fn = table.get(key_of(args))
    if fn is not None:
        return fn(*args)
    if _strict:
        raise Missing(kernel.name)
    return _jit.jit(kernel)(*args)


# ---------------------------------------------------------------------- where modules live
def stamp() -> str:
    """What a prebuilt module depends on: the kernel sources, numba, numpy, Python and the platform."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        numba_version = version("numba")
    except PackageNotFoundError:  # installed without its metadata
        numba_version = "unknown"
    parts = [_jit.source_digest(), numba_version, np.__version__, sys.version, sys.platform, platform.machine()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def base_folder() -> Path:
    """``DISTCOAGENT_PREBUILT_DIR``, else the package's ``kernels/__pycache__/prebuilt`` (beside numba's
    cache), else ``~/.cache/distcoagent/prebuilt`` when the package's folder is read-only."""
    override = os.environ.get("DISTCOAGENT_PREBUILT_DIR", "").strip()
    if override:  # absolute: the build's process runs in another folder
        return Path(override).expanduser().absolute()
    here = _package_folder().parent
    if os.access(here if here.is_dir() else here.parent, os.W_OK):
        return _package_folder()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "distcoagent" / "prebuilt"


def folder() -> Path:
    return base_folder() / stamp()


def switched_on() -> bool:
    return os.environ.get("DISTCOAGENT_PREBUILT", "1").strip().lower() not in OFF


def may_serve() -> bool:
    """Prebuilt kernels of this install's kernel sources, numba and numpy are there (and not switched off)."""
    try:
        return switched_on() and any(folder().glob("*.json"))
    except OSError:
        return False


def enabled() -> bool:
    """Prebuilt kernels may serve this process: kernels on, ``DISTCOAGENT_PREBUILT`` not off, and numba
    not yet in charge here (once it is, every kernel runs through it)."""
    from . import available, enabled as kernels_on

    return switched_on() and available() and kernels_on() and not _jit.materialized()


def load_all() -> int:
    """Load every prebuilt module of ``folder()`` not loaded yet; returns how many kernel versions
    this process can now call without numba."""
    here = folder()
    for manifest in sorted(here.glob("*.json")) if here.is_dir() else []:
        if manifest.name in _loaded:
            continue
        _loaded.add(manifest.name)
        try:
            data = json.loads(manifest.read_text())
            path = here / data["file"]
            loader = importlib.machinery.ExtensionFileLoader(data["module"], str(path))
            spec = importlib.util.spec_from_file_location(data["module"], path, loader=loader)
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            for name, entries in data["kernels"].items():
                kernel = _jit._by_name(name)
                if isinstance(kernel, _jit.Kernel):
                    table = dict(kernel.prebuilt or {})
                    table.update((_tuples(key), getattr(module, export)) for key, export in entries)
                    kernel.prebuilt = table
        except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError):
            continue  # a damaged or foreign manifest: its kernels stay with numba
    _set_route()
    return sum(len(k.prebuilt or {}) for k in _jit.REGISTRY.values())


# ---------------------------------------------------------------------- a study's kernels
def covers(fn, *args) -> bool:
    """``fn(*args)`` ran on prebuilt kernels only (it stops at the first kernel that has none)."""
    global _strict
    _strict = True
    _set_route()
    try:
        fn(*args)
        return True
    except Missing:
        return False
    finally:
        _strict = False
        _set_route()


def _set_route() -> None:
    """Kernel calls go through ``run`` while only prebuilt kernels may run, or while some are loaded."""
    _jit.route = run if _strict or any(k.prebuilt for k in _jit.REGISTRY.values()) else None


def prepare(fn, *args) -> bool:
    """Make the kernels that ``fn(*args)`` runs available without numba in this process (and in the
    processes it forks): load them, or build them once (a subprocess) and load them.  Returns whether
    they are; if not (no C compiler, prebuilt kernels off, numba already in charge here), the study
    runs on numba as before, and one line on stderr says why.  Only ``prepare`` runs kernels while it
    works (other threads would find only prebuilt ones allowed)."""
    global _failed_here
    if not enabled():
        return False
    load_all()
    if covers(fn, *args):
        return True
    failed = folder() / FAILED
    if failed.is_file() or _failed_here:  # this machine cannot build them, or a build failed here already
        return False
    print("distcoagent: compiling the study's kernels ahead of time, once per install (about 20 s)",
          file=sys.stderr, flush=True)
    why, lacking = build(fn, *args)
    if why is None:
        load_all()
        if covers(fn, *args):
            return True
        why = "the module built does not cover the study's kernels"
    _failed_here = True
    note = ""
    if lacking:  # the machine lacks something (a C compiler, pycc): do not try again at every study
        try:
            failed.write_text(why + "\n")
            note = f" Delete {failed} to try again."
        except OSError:
            pass
    print(f"distcoagent: kernels not compiled ahead of time ({why}); numba compiles them in each process "
          f"instead (more memory, the same numbers).{note}", file=sys.stderr)
    return False


LACKING = 3  # the build's exit status when the machine lacks what it needs (not this study's fault)
TIMEOUT = 900  # seconds a build may take


def build(fn, *args) -> tuple[str | None, bool]:
    """Compile ahead of time every kernel version ``fn(*args)`` uses, in a subprocess, into ``folder()``.
    Returns (None, False), or (why it failed, whether the machine lacks what a build needs)."""
    here = folder()
    try:
        here.mkdir(parents=True, exist_ok=True)
        _drop_abandoned(here)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=here))
    except OSError as exc:
        return f"cannot write {here}: {exc.strerror or exc}", False
    try:
        try:
            workload = pickle.dumps((fn, args))
        except Exception as exc:  # noqa: BLE001 (pickle raises what the object's reducer raises)
            return f"the study cannot be sent to the build's process: {type(exc).__name__}: {exc}", False
        (work / "workload.pickle").write_bytes(workload)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:  # in the work folder: the current folder may hold another checkout of the package
            proc = subprocess.run([sys.executable, "-m", "distcoagent.kernels.prebuilt", str(work)], env=env,
                                  cwd=str(work), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"the build took more than {TIMEOUT} s", False
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            why = lines[-1][:300] if lines else f"the build exited with status {proc.returncode}"
            return why, proc.returncode == LACKING
        data = json.loads((work / "manifest.json").read_text())
        os.replace(work / data["file"], here / data["file"])
        os.replace(work / "manifest.json", here / f"{data['module']}.json")  # last: readers see whole modules
    except (OSError, ValueError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}", False
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if base_folder() == _package_folder():
        _drop_stale(here)
    return None, False


def _package_folder() -> Path:
    return Path(__file__).parent / "__pycache__" / "prebuilt"


def _drop_stale(here: Path) -> None:
    """In the package's own folder: modules of other kernel sources or numba versions of this install
    will not be loaded again (a folder shared between installs keeps every install's)."""
    for other in here.parent.iterdir():
        if other != here and other.is_dir() and re.fullmatch(r"[0-9a-f]{20}", other.name):
            shutil.rmtree(other, ignore_errors=True)


def _drop_abandoned(here: Path, age: float = 3600.0) -> None:
    """Work folders of builds that were killed (an hour old: no build takes that long)."""
    import time

    for work in here.glob("build-*"):
        try:
            if time.time() - work.stat().st_mtime > age:
                shutil.rmtree(work, ignore_errors=True)
        except OSError:
            pass


def export_name(kernel, i: int) -> str:
    """The module's name for version ``i`` of ``kernel``: from its module and name (two kernel modules
    may each have an ``act``)."""
    return f"{kernel.name.rsplit('.', 2)[-2]}__{kernel.fn.__name__}_{i}"


def _lacking(why: str) -> SystemExit:
    print(why, file=sys.stderr)
    return SystemExit(LACKING)


def _build_here(work: Path) -> None:
    """(In the build's subprocess.)  Run the workload on numba, then compile what it used into
    ``work``: the module and its manifest."""
    import warnings

    try:
        from numba.core.errors import NumbaPendingDeprecationWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
            import numba.pycc.compiler as pycc_compiler
            from numba.pycc import CC
    except ImportError as exc:  # numba without pycc (it is pending deprecation), or no setuptools
        raise _lacking(f"numba's pycc does not import: {exc}")
    name = f"distcoagent_prebuilt_{os.urandom(6).hex()}"
    try:
        cc = CC(name)  # finds the C compiler first: without one, nothing else is worth doing
    except RuntimeError:
        named = os.environ.get("CC")
        raise _lacking(f"no working C compiler{f' (CC={named})' if named else ''}; pycc needs one, "
                       f"with Python's headers")
    fn, args = pickle.loads((work / "workload.pickle").read_bytes())
    _jit.materialize()
    fn(*args)
    cc.output_dir = str(work)
    cc.use_nrt = False  # as the kernels: they allocate nothing
    cc.target_cpu = ""  # generic code for the architecture: the module may be shared between machines
    release_gil, kernels = {}, {}
    for kernel in _jit.REGISTRY.values():
        if kernel.options.get("inline") or kernel.dispatcher is None:
            continue
        for i, sig in enumerate(kernel.dispatcher.signatures):
            try:
                key = key_of_type(sig)
            except TypeError:  # an argument no key describes: that version stays with numba
                continue
            export = export_name(kernel, i)
            cc.export(export, kernel.dispatcher.overloads[sig].signature)(kernel.fn)
            kernels.setdefault(kernel.name, []).append([key, export])
        release_gil[kernel.fn] = bool(kernel.options.get("nogil"))
    if not kernels:
        raise SystemExit("the study ran no kernel")
    compile_extra, flagged = pycc_compiler.compile_extra, []

    def with_kernel_flags(typing, target, func, args, return_type, flags, *rest, **kwargs):
        flags.error_model = "numpy"  # as ``_jit``: a float division by zero gives inf or nan
        flags.release_gil = release_gil.get(func, False)
        flagged.append(func)
        return compile_extra(typing, target, func, args, return_type, flags, *rest, **kwargs)

    pycc_compiler.compile_extra = with_kernel_flags  # pycc compiles with default flags otherwise
    try:
        cc.compile()
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ in ("CompileError", "LinkError"):  # distutils': the machine's toolchain
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise _lacking(f"the C compiler could not build pycc's module (are Python's headers installed?): "
                           f"{first[:200]}")
        raise
    if len(flagged) != sum(len(entries) for entries in kernels.values()):  # another numba: not our flags
        raise _lacking("numba's pycc no longer compiles through compile_extra: the kernels' flags cannot be set")
    (work / "manifest.json").write_text(json.dumps({"module": name, "file": Path(cc.output_file).name,
                                                    "kernels": kernels}))


if __name__ == "__main__":
    from distcoagent.kernels import prebuilt as _module  # the package's module, not this __main__ copy

    try:
        _module._build_here(Path(sys.argv[1]))
    except Exception as exc:  # one line for the caller's message (the last line of stderr)
        lines = [line for line in str(exc).splitlines() if line.strip()]
        sys.exit(f"{type(exc).__name__}: {lines[0] if lines else 'no message'}")
