"""The Ray lane (tests/conftest.py) names modules and tests that exist: a renamed one would otherwise leave the
lane silently and run its Ray beside the Ray tests."""
from pathlib import Path

import conftest

HERE = Path(__file__).parent


def test_the_ray_lane_names_modules_and_tests_that_exist():
    for module in conftest.RAY_MODULES:
        assert (HERE / module).is_file(), f"RAY_MODULES: no tests/{module}"
    for test in conftest.RAY_TESTS:
        module, name = test.split("::")
        assert f"\ndef {name}(" in (HERE / module).read_text(), f"RAY_TESTS: no {name} in tests/{module}"


def test_test_ids_fall_in_the_right_lane():
    assert conftest.in_ray_lane("tests/test_ray_engine.py::test_paper_network_agrees_with_in_process[per-coagent]")
    assert conftest.in_ray_lane("tests/test_cli.py::test_train_on_the_ray_engine_matches_the_in_process_engine")
    assert conftest.in_ray_lane("test_resume.py::test_ray_engine_stops_on_sigint_without_crashing_and_resumes_in_"
                                "process")
    assert not conftest.in_ray_lane("tests/test_cli.py::test_help_describes_every_option")
    assert not conftest.in_ray_lane("tests/test_exact.py::test_params_are_checked")
    assert not conftest.in_ray_lane("distcoagent/rng.py::distcoagent.rng")
