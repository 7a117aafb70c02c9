import os
import sys
from pathlib import Path

import pytest

TESTS = str(Path(__file__).parent)
sys.path.insert(0, TESTS)  # tests import their shared fakes by module name
# Studies run on numba's compiled kernels here, never on a module compiled ahead of time into the
# package's cache (``kernels.prebuilt``): test_prebuilt.py builds its own, in a folder of its own.
os.environ.setdefault("DISTCOAGENT_PREBUILT", "0")


class SharedRay:
    """One small local Ray (2 CPUs, no dashboard, a metrics endpoint on a free port of 127.0.0.1) shared by
    the test modules that ask for ``local_ray``: starting and stopping Ray costs about 5 s per module on 2
    cores. Its own even if `ray start` runs a cluster on this machine. Its actors import the shared fakes
    (core_fakes) by module name, so this folder is on their PYTHONPATH.

    The modules that share it run one after the other (``pytest_collection_modifyitems``); it is shut down
    before any other test (those start Ray their own way, or run Ray-free), and restarted fresh for a module
    when the last one left actors holding CPUs (a failed test that never closed its engine)."""

    port: int | None = None
    raylet: int | None = None  # its raylet's pid: the semaphores it leaves are removed when it stops

    @classmethod
    def start(cls):
        import ray
        from distcoagent.ray_engine.cluster import raylet_pid
        from ray_networks import free_port

        port = free_port()
        path = os.pathsep.join([TESTS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}}, _metrics_export_port=port)
        cls.port = port
        cls.raylet = raylet_pid()

    @classmethod
    def stop(cls):
        import ray
        from distcoagent.ray_engine.cluster import remove_semaphores_left_by

        if cls.port is not None:
            if ray.is_initialized():
                ray.shutdown()
            remove_semaphores_left_by(cls.raylet)
            cls.port = cls.raylet = None

    @classmethod
    def clean(cls, wait: float = 3.0) -> bool:
        """Still up, and every CPU free again (a closed engine's actors release theirs within moments)."""
        import time

        import ray

        if not ray.is_initialized():
            return False
        deadline = time.monotonic() + wait
        while True:
            if ray.available_resources().get("CPU", 0.0) >= ray.cluster_resources().get("CPU", 0.0):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@pytest.fixture(scope="module")
def local_ray() -> int:
    """The shared local Ray (see ``SharedRay``); returns the port of its metrics endpoint."""
    if SharedRay.port is not None and not SharedRay.clean():
        SharedRay.stop()  # the last module left this Ray busy: a fresh one instead
    if SharedRay.port is None:
        SharedRay.start()
    return SharedRay.port


# The Ray lane: the test modules that run Ray (on the shared Ray, or started their own way: the CLI, `ray start`,
# a multi-node cluster), and the Ray tests of other modules (module::function). See pytest_xdist_make_scheduler.
RAY_MODULES = {"test_cluster_address.py", "test_contract.py", "test_dashboard_live.py", "test_freerun_ray.py",
               "test_option_critic_ray.py", "test_ray_cluster.py", "test_ray_engine.py", "test_ray_faults.py",
               "test_ray_metrics.py", "test_two_node_cluster.py"}
RAY_TESTS = {"test_cli.py::test_train_on_the_ray_engine_matches_the_in_process_engine",
             "test_resume.py::test_ray_engine_stops_on_sigint_without_crashing_and_resumes_in_process"}


def in_ray_lane(nodeid: str) -> bool:
    """Whether the test ``nodeid`` (tests/test_x.py::test_y[params]) runs Ray."""
    path, _, name = nodeid.partition("::")
    module = path.rsplit("/", 1)[-1]
    return module in RAY_MODULES or f"{module}::{name.split('[')[0]}" in RAY_TESTS


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``-n 2 --dist loadscope`` (the default options): one pytest worker runs the Ray lane, in collection order, one
    Ray at a time, while the other runs the Ray-free tests, one by one as it is free (a Ray-free test may also run
    on the first worker once the lane is done). The Ray tests leave about a quarter of the 2 cores idle (waits for
    actors, clusters, metrics and rate-limited runs); the Ray-free tests fill it. Running the `ray start` modules
    beside the shared Ray as well did not pay: the cores were then busy 93% of the time, the suite no shorter.

    The lane is decided here, in the controller, from the test ids alone: xdist's own ``loadgroup`` reads groups
    from ids that its workers rewrite, which pytest 9.2 no longer lets them do (pytest-xdist issue 1386: the groups
    are silently ignored)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class RayLane(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if in_ray_lane(nodeid) else nodeid

    return RayLane(config, log)


def pytest_collection_modifyitems(session, config, items):
    """The modules that share the local Ray run one after the other, where the first of them was (each
    module's tests stay together and in order)."""
    shared = [item for item in items if _shares(item)]
    if shared:
        first = items.index(shared[0])
        rest = [item for item in items if not _shares(item)]
        items[:] = rest[:first] + shared + rest[first:]


def _shares(item) -> bool:
    return "local_ray" in getattr(item, "fixturenames", ())


def pytest_runtest_setup(item):
    if not _shares(item):
        SharedRay.stop()  # the tests that start Ray their own way need none running in this process
    elif not in_ray_lane(item.nodeid):
        pytest.fail(f"{item.nodeid} uses the shared Ray (local_ray) outside the Ray lane: add its module to "
                    "RAY_MODULES (or the test to RAY_TESTS) in tests/conftest.py", pytrace=False)


@pytest.hookimpl(trylast=True)  # after the test's own teardown
def pytest_runtest_teardown(item):
    """A test outside the Ray lane may run beside the Ray tests: it must not start Ray in this process."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not in_ray_lane(item.nodeid):
        from distcoagent.ray_engine.cluster import shutdown_ray

        shutdown_ray()
        pytest.fail(f"{item.nodeid} started Ray: add it to RAY_TESTS (or its module to RAY_MODULES) in "
                    "tests/conftest.py, so that it runs in the Ray lane", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    SharedRay.stop()


@pytest.hookimpl(trylast=True)  # after pytest's faulthandler plugin has disabled its own
def pytest_unconfigure(config):
    """Keep a fatal error after the last test visible: pytest's own faulthandler stops at unconfigure, and a
    crash while the interpreter exits (Ray's and numba's threads are still being torn down) would otherwise
    turn a passing run into a bare exit code 139. One such exit was seen once, after every test passed."""
    import faulthandler

    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.__stderr__, all_threads=True)
