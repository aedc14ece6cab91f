"pytest set-up: hypothesis explores new examples on every local run, but CI (HYPOTHESIS_PROFILE=ci) replays a fixed set."
import os
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
