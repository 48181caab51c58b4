"""`bonsai-mcu bench`: per-layer instruction counts on emulated cores and the BENCHMARKS.md page.

The measurements need the cross compilers and QEMU; without them these tests skip (and fail
in CI, where `make test` installs them).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bonsai_mcu.bench import CMSIS_PER_MAC, layer_cases, measure, run_bench
from bonsai_mcu.ir import node_macs
from bonsai_mcu.targets import load_target


def require(target_name: str):
    target = load_target(target_name)
    missing = [tool for tool in (target.cc, target.qemu["system"]) if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed; install with: make toolchains"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return target


def case(name: str, folder: Path):
    return next(c for c in layer_cases(folder) if c.name == name)


@pytest.mark.parametrize("target_name", ["cortex-m4", "esp32c3"])
def test_layers_add_up_to_inference(target_name, tmp_path):
    target = require(target_name)
    result = measure(case("pointwise_64", tmp_path), target, 1, tmp_path / "work", reference=False)
    layer_sum = sum(result.layers)
    # The whole count adds the input and output copies and the call; layer readings cost
    # nothing once their overhead is taken off.
    assert 0.97 * result.total <= layer_sum <= result.total
    assert result.layers[0] > 0.9 * result.total
    assert result.ram["arena"] >= result.compiled.plan.arena_size
    assert result.flash["weights"] > 0


def test_minstret_counts_repeat_exactly(tmp_path):
    target = require("esp32c3")
    depthwise = case("depthwise_3x3", tmp_path)
    first = measure(depthwise, target, 2, tmp_path / "first", reference=False)
    second = measure(depthwise, target, 1, tmp_path / "second", reference=False)
    assert first.layers == second.layers
    # The whole call also copies the input, and memcpy's path depends on its alignment.
    assert abs(first.total - second.total) <= 8


def test_fast_kernels_beat_reference(tmp_path):
    target = require("cortex-m4")
    result = measure(case("depthwise_3x3", tmp_path), target, 1, tmp_path / "work", reference=True)
    macs = [node_macs(node, result.compiled.graph) for node in result.compiled.graph.nodes]
    fast, reference = result.layers[0] / macs[0], result.reference_layers[0] / macs[0]
    assert fast < CMSIS_PER_MAC[("depthwise_3x3", "cortex-m4")]
    assert fast * 10 < reference


def test_markdown_page(tmp_path):
    require("cortex-m4")
    output = tmp_path / "BENCHMARKS.md"
    text = run_bench(["cortex-m4"], output, repeats=1, models=tmp_path / "no-models", workdir=tmp_path / "work",
                     command="bonsai-mcu bench --target cortex-m4 --repeats 1")
    assert output.read_text() == text
    assert "`bonsai-mcu bench --target cortex-m4 --repeats 1`" in text
    goals = text[text.index("## Goals"):text.index("## Single layers")]
    # Three single-layer goals on Cortex-M4; the keyword-spotting rows need the shared models.
    assert len(re.findall(r"^\| .*Cortex-M4, instructions/MAC \| at most [\d.]+ \| [\d.]+ \| (yes|no) \|$", goals,
                          re.MULTILINE)) == 3
    layers = text[text.index("## Single layers"):text.index("## Whole models")]
    for anchor in ("1.92", "2.05", "8.1"):
        assert f"| {anchor} |" in layers
    models = text[text.index("## Whole models"):]
    assert re.search(r"^\| digits \| cortex-m4 \| [\d,]+ \| 6,464 \|", models, re.MULTILINE)
