import os
import sys
from pathlib import Path

import pytest

TESTS = str(Path(__file__).parent)
sys.path.insert(0, TESTS)  # tests import their shared fakes by module name


@pytest.fixture(scope="module")
def local_ray():
    """A small local Ray for one test module (2 CPUs, no dashboard), shut down after it; its own even if
    `ray start` runs a cluster on this machine. Its actors import the shared fakes (core_fakes) by
    module name, so this folder is on their PYTHONPATH."""
    import ray

    path = os.pathsep.join([TESTS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.hookimpl(trylast=True)  # after pytest's faulthandler plugin has disabled its own
def pytest_unconfigure(config):
    """Keep a fatal error after the last test visible: pytest's own faulthandler stops at unconfigure, and a
    crash while the interpreter exits (Ray's and numba's threads are still being torn down) would otherwise
    turn a passing run into a bare exit code 139. One such exit was seen once, after every test passed."""
    import faulthandler

    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.__stderr__, all_threads=True)
