"""Two generated models in one program: the digits classifier and a small convolutional graph
built here, with different --name values, linked together and run one after the other."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bonsai_mcu.pipeline import compile_model, write_output
from bonsai_mcu.package import package_files
from bonsai_mcu.targets import load_target
from bonsai_mcu.verify import quantize_inputs, reference_outputs

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
SAMPLES = 8


def require_tool(tool: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} not found; install it with: {install}"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so a missing tool fails: {reason}")
        pytest.skip(reason)
    return path


def conv_model() -> onnx.ModelProto:
    """x [1, 2, 6, 6] -> Conv 3x3 (4 filters, pad 1) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm 5."""
    rng = np.random.default_rng(7)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "conv_b"),
        numpy_helper.from_array(rng.standard_normal((5, 36)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32) * 0.1, "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# main() reads, for each sample, the digits input then the tiny input from argv[1], runs both
# models and writes the digits output then the tiny output to argv[2].
MAIN_C = """#include <stdio.h>

#include "digits.h"
#include "tiny.h"

int main(int argc, char **argv)
{
    static int8_t digits_in[DIGITS_INPUT_0_SIZE], digits_out[DIGITS_OUTPUT_0_SIZE];
    static int8_t tiny_in[TINY_INPUT_0_SIZE], tiny_out[TINY_OUTPUT_0_SIZE];
    FILE *in, *out;

    if (argc != 3 || (in = fopen(argv[1], "rb")) == NULL || (out = fopen(argv[2], "wb")) == NULL) {
        return 2;
    }
    while (fread(digits_in, 1, sizeof digits_in, in) == sizeof digits_in) {
        if (fread(tiny_in, 1, sizeof tiny_in, in) != sizeof tiny_in) {
            return 3;
        }
        if (digits_run(digits_in, digits_out) != 0 || tiny_run(tiny_in, tiny_out) != 0) {
            return 4;
        }
        fwrite(digits_out, 1, sizeof digits_out, out);
        fwrite(tiny_out, 1, sizeof tiny_out, out);
    }
    fclose(in);
    return fclose(out) == 0 ? 0 : 5;
}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Generate both models (every manifest included); return their output folders, inputs and
    reference outputs."""
    folder = tmp_path_factory.mktemp("two-models")
    tiny_path = folder / "tiny.onnx"
    onnx.save(conv_model(), tiny_path)
    rng = np.random.default_rng(3)
    tiny_samples = rng.standard_normal((SAMPLES + 32, 1, 2, 6, 6)).astype(np.float32)
    np.save(folder / "tiny_calibration.npy", tiny_samples[SAMPLES:, 0])

    target = load_target("host")
    specs = [("digits", DIGITS / "digits.onnx", DIGITS / "digits_calibration.npy",
              [[row[None, :].astype(np.float64)] for row in np.load(DIGITS / "digits_test.npy")[:SAMPLES]]),
             ("tiny", tiny_path, folder / "tiny_calibration.npy",
              [[sample.astype(np.float64)] for sample in tiny_samples[:SAMPLES]])]
    result = {}
    for name, model, calibration, samples in specs:
        compiled = compile_model(model, target, name, None, calibration)
        out = folder / name
        write_output(compiled.files, out, extra=package_files(compiled, ["cmake"], out))
        inputs = quantize_inputs(compiled.graph, samples)
        result[name] = (out, inputs, reference_outputs(compiled.graph, inputs))
    return result


def check_outputs(raw: bytes, models) -> None:
    digits_size = models["digits"][2][0][0].size
    tiny_size = models["tiny"][2][0][0].size
    data = np.frombuffer(raw, dtype=np.int8)
    assert data.size == SAMPLES * (digits_size + tiny_size)
    rows = data.reshape(SAMPLES, digits_size + tiny_size)
    for sample in range(SAMPLES):
        np.testing.assert_array_equal(rows[sample, :digits_size], models["digits"][2][sample][0],
                                      err_msg=f"digits output of sample {sample}")
        np.testing.assert_array_equal(rows[sample, digits_size:], models["tiny"][2][sample][0],
                                      err_msg=f"tiny output of sample {sample}")


def write_inputs(path: Path, models) -> None:
    chunks = []
    for sample in range(SAMPLES):
        chunks.append(models["digits"][1][sample][0].astype(np.int8).tobytes())
        chunks.append(models["tiny"][1][sample][0].astype(np.int8).tobytes())
    path.write_bytes(b"".join(chunks))


def test_two_models_link_and_run(models, tmp_path):
    cc = require_tool("cc", "apt-get install gcc")
    (tmp_path / "main.c").write_text(MAIN_C)
    sources = [tmp_path / "main.c"]
    includes = []
    for name in ("digits", "tiny"):
        source_dir = models[name][0] / "src"
        sources += sorted(source_dir.glob("*.c"))
        includes += ["-I", str(source_dir)]
    program = tmp_path / "two_models"
    build = subprocess.run([cc, *STRICT, "-O2", *includes, *map(str, sources), "-o", str(program)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr

    write_inputs(tmp_path / "inputs.bin", models)
    result = subprocess.run([str(program), str(tmp_path / "inputs.bin"), str(tmp_path / "outputs.bin")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    check_outputs((tmp_path / "outputs.bin").read_bytes(), models)


def test_model_symbols_carry_their_prefix(models, tmp_path):
    cc = require_tool("cc", "apt-get install gcc")
    nm = require_tool("nm", "apt-get install binutils")
    for name in ("digits", "tiny"):
        for source in sorted((models[name][0] / "src").glob("*.c")):
            obj = tmp_path / f"{name}_{source.stem}.o"
            subprocess.run([cc, *STRICT, "-c", str(source), "-o", str(obj)], check=True)
            listing = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True,
                                     check=True).stdout
            symbols = [line.split()[-1] for line in listing.splitlines() if line.strip()]
            assert symbols, f"{source.name} defines no global symbol"
            for symbol in symbols:
                assert symbol.startswith(f"{name}_"), f"{source.name}: global symbol {symbol} lacks the prefix {name}_"


def test_two_models_in_one_cmake_project(models, tmp_path):
    cmake = require_tool("cmake", "apt-get install cmake")
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.c").write_text(MAIN_C)
    (project / "CMakeLists.txt").write_text(f"""cmake_minimum_required(VERSION 3.13)
project(two_models C)
add_subdirectory("{models['digits'][0]}" digits)
add_subdirectory("{models['tiny'][0]}" tiny)
add_executable(two_models main.c)
target_link_libraries(two_models PRIVATE bonsai::digits bonsai::tiny)
""")
    build = project / "build"
    for command in ([cmake, "-S", str(project), "-B", str(build)], [cmake, "--build", str(build)]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

    write_inputs(tmp_path / "inputs.bin", models)
    result = subprocess.run([str(build / "two_models"), str(tmp_path / "inputs.bin"), str(tmp_path / "outputs.bin")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    check_outputs((tmp_path / "outputs.bin").read_bytes(), models)
