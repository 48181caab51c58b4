"""Names from the model and from --name in generated C."""

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bonsai_mcu.cli import main


def weird_model(path):
    rng = np.random.default_rng(1)
    weights = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    name = "fc /* open ??/\nsecond line */ \x07 end"
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name=name, transB=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_comment_breaking_node_names_compile(tmp_path):
    model = tmp_path / "weird.onnx"
    weird_model(model)
    samples = tmp_path / "x.npy"
    np.save(samples, np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32))

    result = CliRunner().invoke(main, ["verify", str(model), "--inputs", str(samples), "--calibration", str(samples)])

    assert result.exit_code == 0, result.output
    assert "4/4 samples bit-exact" in result.output


def test_names_that_break_builds_rejected(tmp_path):
    model = tmp_path / "weird.onnx"
    weird_model(model)
    for name in ("stdint", "string", "main", "int", "_private", "__reserved", "_Bool"):
        out = tmp_path / f"out_{name}"
        result = CliRunner().invoke(main, ["generate", str(model), "-o", str(out), "--name", name])
        assert result.exit_code != 0, name
        assert f"--name '{name}'" in result.output
        assert not out.exists()
