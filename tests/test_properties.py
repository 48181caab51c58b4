"""Property tests: every kernel against the reference on random shapes and values.

Hypothesis draws shapes, strides, paddings, dilations, groups, scale-group
sizes, zero points, multipliers and data, including the extremes (-128 and
127 everywhere, all-zero weights, one channel). One build of the generic
harness (tests/kernel_harness.c) serves every example: int8 and ternary
kernels must match the reference bit for bit, float32 kernels within the
float32 rounding bound of each output.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bonsai_mcu import BonsaiError
from bonsai_mcu.verify import find_compiler

from kernel_harness import CASES, HypothesisDraw, NumpyDraw, build_harness

try:
    find_compiler()
except BonsaiError as missing:
    pytest.skip(str(missing), allow_module_level=True)

EXAMPLES = 40


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return build_harness(tmp_path_factory.mktemp("kernel-harness"))


@pytest.mark.parametrize("kernel", sorted(CASES))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kernel_matches_reference(harness, kernel, data):
    CASES[kernel](HypothesisDraw(data)).check(harness)


@pytest.mark.parametrize("kernel", sorted(CASES))
def test_kernel_fixed_examples(harness, kernel):
    """Seeded examples, the same on every run, so CI never depends on hypothesis's luck alone."""
    for seed in range(10):
        CASES[kernel](NumpyDraw(seed)).check(harness)
