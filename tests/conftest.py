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
