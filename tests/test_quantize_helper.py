"""The header's NAME_quantize helper against QParams.quantize_float32, which verify uses."""

import subprocess
from pathlib import Path

import numpy as np

from bonsai_mcu.pipeline import compile_model
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import find_compiler

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits"

PROGRAM = r"""
#include <stdio.h>
#include "digits.h"

int main(void)
{
    float value;
    while (fread(&value, sizeof value, 1, stdin) == 1) {
        int8_t q = digits_quantize(value, DIGITS_INPUT_0_SCALE, DIGITS_INPUT_0_ZERO_POINT);
        fwrite(&q, 1, 1, stdout);
    }
    return 0;
}
"""


def test_header_quantize_matches_reference(tmp_path):
    compiled = compile_model(DIGITS / "digits.onnx", load_target("host"), "digits",
                             calibration=DIGITS / "digits_calibration.npy")
    for name, text in compiled.files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "main.c").write_text(PROGRAM)
    executable = tmp_path / "quantize"
    subprocess.run(find_compiler() + ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(tmp_path),
                                      str(tmp_path / "main.c"), "-o", str(executable)], check=True)

    qparams = compiled.graph.tensors[compiled.graph.inputs[0]].qparams
    scale = np.float32(qparams.scale)
    rng = np.random.default_rng(0)
    ties = (np.arange(-600, 600, dtype=np.float32) + np.float32(0.5)) * scale
    values = np.concatenate([
        ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
        rng.uniform(-3, 3, 20000).astype(np.float32), np.load(DIGITS / "digits_test.npy").reshape(-1),
        np.array([0.0, -0.0, 1e30, -1e30, np.inf, -np.inf, np.nan], dtype=np.float32),
    ]).astype(np.float32)

    result = subprocess.run([str(executable)], input=values.tobytes(), capture_output=True, check=True)
    from_c = np.frombuffer(result.stdout, dtype=np.int8)
    expected = qparams.quantize_float32(values)
    mismatches = np.flatnonzero(from_c != expected)
    assert mismatches.size == 0, f"{mismatches.size} values differ, first {values[mismatches[:5]]}"
