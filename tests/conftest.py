"pytest set-up: hypothesis explores new examples on every local run, but CI (HYPOTHESIS_PROFILE=ci) replays a fixed set."
import importlib, os, pkgutil
from hypothesis import settings

# ci: examples seeded from each test's own code (derandomize) and no example database shared between runs or files.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)

if PROFILE == "ci":
    # Hypothesis also mixes in literals ("local constants") from every project module imported so far, so the examples
    # a derandomized test replays used to depend on which test files ran with it (tests/test_visual_rft.py imports
    # modules that tests/test_rewards_fuzz.py does not). Importing the whole package first makes that pool the same
    # for any selection and order of test files.
    import hvr_nbs
    for _m in pkgutil.walk_packages(hvr_nbs.__path__, "hvr_nbs."): importlib.import_module(_m.name)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over a minute (the two-process runs); CI runs them too")


import pytest


@pytest.fixture(autouse=True, scope="session")
def _tempfile_in_pytest_basetemp(tmp_path_factory):
    "Temporary folders the tests make through `tempfile` go under pytest's own base folder, which pytest prunes, not /tmp."
    import tempfile
    old, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = old
