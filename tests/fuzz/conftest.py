"""Property-based tests of every parser (hypothesis).  ``make test`` runs them in a process of their
own under ``prlimit --as`` (a memory bound) with the "make-test" profile: a fixed number of
examples per parser, derandomized so a run is reproducible, and a per-example deadline (a time
bound).  HYPOTHESIS_PROFILE=long explores further by hand."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("make-test", max_examples=500, deadline=5000, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=5000, deadline=2000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "make-test"))
