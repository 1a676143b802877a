"""The fuzz targets' hypothesis settings, chosen by the environment.

`FUZZ_PROFILE=full` (what `make fuzz` sets) runs `FUZZ_EXAMPLES` inputs per target (100,000
unless set), random each run; otherwise a few hundred per target, the same every run, so that
the fast tier stays fast and deterministic. Applied per test (`@FUZZ`), never loaded as the
session's default: other property tests keep their own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "fuzz-quick",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=SLOW_IS_FINE,
)
settings.register_profile(
    "fuzz-full",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100000")),
    deadline=None,
    database=None,
    suppress_health_check=SLOW_IS_FINE,
)

PROFILE = "fuzz-full" if os.environ.get("FUZZ_PROFILE") == "full" else "fuzz-quick"
FUZZ = settings.get_profile(PROFILE)
