"""Sanitizer builds: kernels run clean under AddressSanitizer and UndefinedBehaviorSanitizer,
and a bug planted in a kernel's text is caught by a sanitizer or by the reference comparison.

The sanitizer flags are those verify.build_simulator adds with BONSAI_SANITIZE=1
(`make test` runs the kernel and property tests a second time with it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bonsai_mcu import BonsaiError
from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.quantize import QuantOptions
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import (SANITIZE_FLAGS, build_simulator, compare_outputs, find_compiler, quantize_inputs,
                               reference_outputs, run_simulator, sanitizer_flags)

from kernel_harness import CASES, NumpyDraw, build_harness, render_kernels

try:
    find_compiler()
except BonsaiError as missing:
    pytest.skip(str(missing), allow_module_level=True)

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits"


def planted(files: dict[str, str], name: str, old: str, new: str) -> dict[str, str]:
    """Return `files` with `old` replaced by `new` in file `name`; the text must occur once."""
    assert files[name].count(old) == 1, f"{old!r} not found once in {name}"
    return dict(files, **{name: files[name].replace(old, new)})


@pytest.fixture(scope="module")
def sanitized_harness(tmp_path_factory):
    return build_harness(tmp_path_factory.mktemp("sanitized"), flags=SANITIZE_FLAGS)


def test_flags_follow_environment(monkeypatch):
    monkeypatch.setenv("BONSAI_SANITIZE", "1")
    assert "-fsanitize=address,undefined" in sanitizer_flags()
    assert "-fno-sanitize-recover=all" in sanitizer_flags()

    monkeypatch.setenv("BONSAI_SANITIZE", "0")
    assert sanitizer_flags() == []

    monkeypatch.delenv("BONSAI_SANITIZE")
    assert sanitizer_flags() == []


@pytest.mark.parametrize("kernel", sorted(CASES))
def test_kernels_clean_under_sanitizers(sanitized_harness, kernel):
    for seed in range(5):
        CASES[kernel](NumpyDraw(seed)).check(sanitized_harness)


def test_off_by_one_read_caught_by_asan(tmp_path):
    """dense reads one input and one weight past its row: a heap-buffer-overflow in the harness."""
    files = planted(render_kernels(), "prop_dense.c", "for (k = 0; k < p->depth; ++k)",
                    "for (k = 0; k <= p->depth; ++k)")
    harness = build_harness(tmp_path, files, SANITIZE_FLAGS)

    with pytest.raises(RuntimeError, match="AddressSanitizer: heap-buffer-overflow"):
        CASES["dense int8"](NumpyDraw(0)).check(harness)


def test_signed_overflow_caught_by_ubsan(tmp_path):
    """add computing (a - za) * Ma in int32 overflows for large multipliers."""
    files = planted(render_kernels(), "prop_add.c",
                    "(int64_t)((int32_t)a[ia] - p->a_zero_point) * p->a_multiplier",
                    "(int64_t)(((int32_t)a[ia] - p->a_zero_point) * p->a_multiplier)")
    harness = build_harness(tmp_path, files, SANITIZE_FLAGS)

    with pytest.raises(RuntimeError, match="runtime error: signed integer overflow"):
        for seed in range(20):
            CASES["add"](NumpyDraw(seed)).check(harness)


def test_off_by_one_bound_caught_by_reference(tmp_path):
    """conv2d skipping the last kernel column stays in bounds; the bit-exact comparison catches it."""
    files = planted(render_kernels(), "prop_conv2d.c", "for (kx = 0; kx < p->kernel_w; ++kx)",
                    "for (kx = 0; kx < p->kernel_w - 1; ++kx)")
    harness = build_harness(tmp_path, files)

    with pytest.raises(AssertionError, match="values differ"):
        for seed in range(20):
            CASES["conv2d ternary"](NumpyDraw(seed)).check(harness)


@pytest.mark.parametrize("sanitize", [True, False])
def test_off_by_one_in_generated_model(tmp_path, monkeypatch, sanitize):
    """Plant a read of one weight past each row in the digits model's dense kernel.

    Under the sanitizers the host simulator aborts. Without them its outputs differ from the reference.
    """
    monkeypatch.setenv("BONSAI_SANITIZE", "1" if sanitize else "0")
    compiled = compile_model(DIGITS / "digits.onnx", load_target("host"), "digits",
                             QuantOptions(weights="int8"), DIGITS / "digits_calibration.npy")
    files = planted(compiled.files, "digits_dense.c", "for (k = 0; k < p->depth; ++k)",
                    "for (k = 0; k <= p->depth; ++k)")
    samples = [[row[None, :].astype(np.float64)] for row in np.load(DIGITS / "digits_test.npy")[:20]]
    inputs = quantize_inputs(compiled.graph, samples)
    executable = build_simulator(files, compiled.graph, tmp_path)

    if sanitize:
        with pytest.raises(BonsaiError, match="AddressSanitizer: global-buffer-overflow"):
            run_simulator(executable, compiled.graph, inputs)
    else:
        actual = run_simulator(executable, compiled.graph, inputs)
        assert compare_outputs(reference_outputs(compiled.graph, inputs), actual)
