"""Joining Ray: check a cluster address within seconds, then ``ray.init``; ship a custom environment's module.

``resolve_address`` checks "auto" or "HOST:PORT" in three bounded steps before Ray's own
connect (which retries for 20 s and more, and waits forever on a port where something
else listens):

1. a TCP connection opens (else: no Ray cluster answers there);
2. the port speaks gRPC: an HTTP/2 handshake is answered with a SETTINGS frame (else:
   an HTTP server, a silent service, ... is there, not the head's GCS);
3. token authentication: one call to the GCS with this process's token settings
   (``ray._raylet.GcsClient``, as ``ray health-check`` does); Ray's
   ``AuthenticationError`` becomes a ``ConnectionError`` that names ``RAY_AUTH_MODE`` and
   ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``.

Tokens, decided as Ray 2.60 decides: with ``RAY_AUTH_MODE`` unset, a token file is used
for "auto" (a cluster on this machine) but never sent to an explicit HOST:PORT; such a
cluster refuses the call and the error says to set ``RAY_AUTH_MODE=token``.  With
``RAY_AUTH_MODE=token`` and no token anywhere, the error comes before any call (Ray's
client would abort the process).

``module_runtime_env(env_id)`` is the Ray ``runtime_env`` that makes a custom
environment's module importable in Ray's workers (see docs/custom-environments.md).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import site
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path

HINT = "start one with `ray start --head`, or omit --address to run Ray in this process"
GCS_PORT_HINT = ("give the head's GCS port (`ray start --head --port`, default 6379; not the dashboard's 8265 "
                 "or the Ray Client's 10001)")
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
SETTINGS_FRAME = 0x04


def reachable(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to host:port opens within ``timeout`` seconds, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return str(error) or type(error).__name__


def speaks_grpc(host: str, port: int, timeout: float) -> str | None:
    """None if host:port answers an HTTP/2 (gRPC) handshake within ``timeout`` seconds, else what it did."""
    answer = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.sendall(HTTP2_PREFACE)
            deadline = time.monotonic() + timeout
            while len(answer) < 9:
                connection.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = connection.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
    except socket.timeout:
        return f"it accepts connections but did not answer an HTTP/2 (gRPC) handshake within {timeout:g} s"
    except OSError as error:
        if not answer:
            return f"it did not answer an HTTP/2 (gRPC) handshake ({error or type(error).__name__})"
    if len(answer) == 9 and answer[3] == SETTINGS_FRAME:
        return None
    if answer.startswith((b"HTTP/", b"<")):  # a status line, or an HTML error page
        return "an HTTP server answers there"
    if not answer:
        return "it closed the connection without answering an HTTP/2 (gRPC) handshake"
    return f"it answered {answer!r}, not an HTTP/2 (gRPC) handshake"


def token_source() -> str | None:
    """Where Ray reads this process's token from (in Ray's order), or None if there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}" if _nonempty(Path(path).expanduser()) else None
    default = Path.home() / ".ray" / "auth_token"
    return "~/.ray/auth_token" if _nonempty(default) else None


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text().strip())
    except OSError:
        return False


def check_token(address: str, label: str, timeout: float) -> None:
    """Ask the GCS at ``address`` for one key with this process's token settings; fail with a
    ConnectionError naming the settings if it refuses them (``label``: the address as given)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    source = token_source()
    if mode == "token" and source is None:
        raise ConnectionError(f"--address {label}: RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN, "
                              "or RAY_AUTH_TOKEN_PATH to a file holding it, or copy the head's ~/.ray/auth_token "
                              "to this machine")
    import ray._raylet

    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return

    outcome: list = []

    def ask():
        try:
            ray._raylet.GcsClient(address=address).internal_kv_get(b"distcoagent-probe", b"distcoagent",
                                                                  timeout=timeout)
            outcome.append(None)
        except Exception as error:  # noqa: BLE001 - reported below
            outcome.append(error)

    worker = threading.Thread(target=ask, name="distcoagent-gcs-probe", daemon=True)
    with _quiet_stderr():  # Ray's C++ client logs a refused call on stderr; the error below says it better
        worker.start()
        worker.join(timeout)
    if not outcome:
        raise ConnectionError(f"--address {label}: a gRPC server answers but not as a Ray GCS within "
                              f"{timeout:g} s; {GCS_PORT_HINT}")
    error = outcome[0]
    if isinstance(error, AuthenticationError):
        if mode != "token":
            found = f" ({source} exists here)" if source else ""
            raise ConnectionError(f"--address {label}: the cluster requires token authentication but "
                                  f"RAY_AUTH_MODE is not 'token'; set RAY_AUTH_MODE=token, with the head's token in "
                                  f"RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token{found}") from None
        raise ConnectionError(f"--address {label}: the cluster refused the token from {source} "
                              "(RAY_AUTH_MODE=token); use the head's token: its ~/.ray/auth_token, in RAY_AUTH_TOKEN "
                              "or RAY_AUTH_TOKEN_PATH") from None
    # any other error (a version mismatch, ...) is left to ray.init, which explains it


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 (where C++ logs go) to /dev/null for the duration."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def resolve_address(address: str, timeout: float = 3.0) -> str:
    """Check that a Ray cluster answers at ``address`` ("auto" or "HOST:PORT") within seconds,
    accepting this process's token; return the address to give ``ray.init``."""
    if not isinstance(address, str) or not address:
        raise ConnectionError(f"--address {address!r}: expected 'auto' or HOST:PORT, e.g. 127.0.0.1:6379")
    if address == "auto":
        from ray._private import services

        try:
            resolved = services.canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, ValueError) as error:
            raise ConnectionError(f"--address auto: no running Ray cluster found on this machine ({error}); "
                                  f"{HINT}") from None
        _enable_token_for_local_cluster()
    else:
        resolved = address
    client = resolved.startswith("ray://")
    target = resolved[len("ray://"):] if client else resolved
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConnectionError(f"--address {address!r}: expected 'auto' or HOST:PORT, e.g. 127.0.0.1:6379")
    host = host.strip("[]")  # [::1]:6379
    reason = reachable(host, int(port), timeout)
    if reason is not None:
        raise ConnectionError(f"--address {address}: no Ray cluster answers at {host}:{port} within "
                              f"{timeout:g} s ({reason}); {HINT}")
    if os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):  # TLS: no plain HTTP/2 handshake
        reason = speaks_grpc(host, int(port), timeout)
        if reason is not None:
            raise ConnectionError(f"--address {address}: something listens at {host}:{port} but it is not a Ray "
                                  f"cluster ({reason}); {GCS_PORT_HINT}")
    if not client:  # the Ray Client server is not the GCS: it checks tokens itself
        check_token(target, address, timeout)
    return resolved


def _enable_token_for_local_cluster() -> None:
    """For "auto", Ray turns token mode on when RAY_AUTH_MODE is unset and a token file exists; so do we."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(address: str | None, timeout: float = 3.0, runtime_env: dict | None = None) -> bool:
    """Initialise Ray: join the cluster at ``address`` (checked first by ``resolve_address``); with
    None, the one in RAY_ADDRESS (set in a Ray job), else a new Ray in this process, even if
    `ray start` runs a cluster on this machine.  ``runtime_env``: Ray's, for the job
    (``module_runtime_env``).  True if we started Ray; False if this process had already
    initialised it (its runtime_env stays)."""
    import ray

    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    if ray.is_initialized():
        if address is not None:  # already connected (e.g. tests); the address must still answer
            resolve_address(address, timeout)
        return False
    options = {"logging_level": "WARNING", "log_to_driver": False}
    if runtime_env:
        options["runtime_env"] = runtime_env
    if address is None:
        options.update(address="local", include_dashboard=False)
    else:
        options["address"] = resolve_address(address, timeout)
    with _keeping_sigterm_handler():
        ray.init(**options)
    return True


@contextlib.contextmanager
def _keeping_sigterm_handler():
    """``ray.init`` in the main thread replaces the SIGTERM handler by one that exits at once; a handler
    the caller had set (the command line's: finish the tick, write a checkpoint) is put back."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if previous not in (None, signal.SIG_DFL):  # the caller's handler, or SIG_IGN
            signal.signal(signal.SIGTERM, previous)


def _installed(path: Path) -> bool:
    """True if ``path`` is in the standard library or an installed package's directory (site-packages)."""
    roots = set(site.getsitepackages()) | {site.getusersitepackages()}
    roots |= {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    path = path.resolve()
    return any(path.is_relative_to(Path(root).resolve()) for root in roots if root)


def module_runtime_env(env_id: str) -> dict | None:
    """Ray's ``runtime_env`` that ships the module behind ``env_id`` to the workers, or None when
    there is nothing to ship (a built-in id, an installed package, distcoagent itself).

    The module is ``MODULE`` of ``"MODULE:EnvId"``, else the module of the id's registered entry
    point; its top-level package (or single file) goes in ``py_modules``, which Ray uploads to
    the cluster, so it works for a local Ray and for ``--address`` alike.  It must be importable
    here (it is, once the environment was made).

    >>> module_runtime_env("CartPole-v1") is None, module_runtime_env("distcoagent/GridWorld-v0") is None
    (True, True)
    """
    import gymnasium as gym

    module_name, sep, _ = env_id.partition(":")
    if not sep:
        spec = gym.registry.get(env_id)
        entry = getattr(spec, "entry_point", None)
        module_name = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
    top = module_name.split(".")[0]
    if not top or top in ("distcoagent", "gymnasium", "__main__") or top in sys.builtin_module_names:
        return None
    try:
        module = sys.modules.get(top) or importlib.import_module(top)
    except ImportError:
        return None
    paths = list(getattr(module, "__path__", []))
    if len(paths) > 1:  # a namespace package spread over several directories: Ray cannot ship it
        return None
    location = paths[0] if paths else getattr(module, "__file__", None)
    if location is None or _installed(Path(location)):
        return None
    return {"py_modules": [str(Path(location).resolve())]}


def raylet_pid(node=None) -> int | None:
    """The process id of the raylet that a Ray node object started: by default this process's, which
    ``ray.init`` started for a local Ray; or None (joined a cluster, Ray not initialised, or a Ray
    whose internals differ)."""
    try:
        import ray
        from ray._private import ray_constants

        node = node if node is not None else ray._private.worker._global_node
        return int(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    except Exception:  # noqa: BLE001 - private API: no pid means nothing is cleaned
        return None


def shutdown_ray() -> None:
    """``ray.shutdown()``, then remove the named semaphores the local raylet it stopped left in /dev/shm (none
    when this process had joined a cluster: its raylet runs on)."""
    import ray

    raylet = raylet_pid()
    ray.shutdown()
    remove_semaphores_left_by(raylet)


def remove_semaphores_left_by(raylet_pid: int | None, shm: Path = Path("/dev/shm")) -> int:
    """Remove the named semaphores a raylet that has exited left in ``shm``; how many files.

    Ray 2.60's raylet opens POSIX named semaphores for the compiled-graph channels it registers,
    in pairs (``sem.obj<pid>-<n>`` and ``sem.hdr<pid>-<n>``, its pid in the name), and unlinks
    none of them, not even when it shuts down: each Ray engine on a local Ray left 100-300 such
    files, each a page of shared memory, until the machine restarts.  Once that raylet has
    exited nothing can open them again.  A raylet still running (or a pid now taken by another
    process) is left alone; a zombie counts as exited."""
    if raylet_pid is None or running(raylet_pid):
        return 0
    removed = 0
    for kind in ("obj", "hdr"):
        for path in shm.glob(f"sem.{kind}{raylet_pid}-*"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def running(pid: int) -> bool:
    """``pid`` is a live process (a zombie, killed and not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
