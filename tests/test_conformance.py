"""Conformance with ONNX's operator tests, float32 mode end to end.

The full suite (about 2000 cases, 40 s) runs with
`python -m bonsai_mcu.conformance --out docs/conformance.md`. Here a
representative subset runs in CI: at least one case of every ONNX op the
importer accepts, including the rewrites (constants frozen from graph inputs,
batches split into samples), plus cases that must be skipped.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bonsai_mcu import BonsaiError, conformance
from bonsai_mcu.conformance import collect_cases, markdown, prepare_case, run_case
from bonsai_mcu.importer import import_onnx
from bonsai_mcu.ir import OPS

# Every case here passes: C and reference both match ONNX's expected outputs.
PASSING = {
    "node": [
        "test_add_bcast", "test_averagepool_2d_ceil", "test_averagepool_2d_pads_count_include_pad",
        "test_averagepool_2d_same_lower", "test_clip_min_greater_than_max", "test_clip_splitbounds",
        "test_conv_with_autopad_same", "test_conv_with_strides_and_asymmetric_padding",
        "test_dropout_default_old", "test_elu", "test_flatten_axis2", "test_gemm_default_scalar_bias",
        "test_gemm_transposeB", "test_globalaveragepool", "test_globalmaxpool", "test_hardsigmoid",
        "test_hardswish", "test_identity", "test_leakyrelu", "test_matmul_2d", "test_maxpool_2d_ceil",
        "test_maxpool_2d_same_upper", "test_relu", "test_reshape_negative_dim", "test_sigmoid",
        "test_softmax_axis_1", "test_softmax_large_number", "test_softplus", "test_spacetodepth_example_expanded",
        "test_squeeze", "test_tanh", "test_transpose_all_permutations_3", "test_unsqueeze_two_axes",
    ],
    "pytorch-converted": [
        "test_AvgPool1d_stride", "test_Conv1d_dilated", "test_Conv2d_depthwise_strided", "test_Conv2d_groups",
        "test_ELU", "test_Linear", "test_MaxPool1d_stride", "test_PixelShuffle", "test_Softmax",
    ],
    "pytorch-operator": ["test_operator_permute2", "test_operator_flatten"],
}

# Cases the importer rejects, and the reason the table must give.
SKIPPED = {
    "test_training_dropout": "training_mode is true",
    "test_maxpool_2d_dilations": "dilated pooling is not supported",
    "test_convtranspose": "op not supported",
    "test_maxpool_with_argmax_2d_precomputed_pads": "output 'z' is not supported",
}


@pytest.fixture(scope="module")
def cases() -> dict[str, conformance.Case]:
    return {case.name: case for case in collect_cases()}


@pytest.mark.parametrize("suite, name", [(s, n) for s, names in PASSING.items() for n in names])
def test_case_passes(cases, tmp_path, suite, name):
    case = cases[name]
    assert case.suite == suite

    result = run_case(case, tmp_path)

    assert result.status == "passed", result.reason


def test_subset_covers_every_ir_op(cases, tmp_path):
    """Every IR op that has a float32 kernel appears in a passing case above."""
    covered = set()
    for names in PASSING.values():
        for name in names:
            for _, graph, _ in prepare_case(cases[name], tmp_path / name, []):
                covered.update(node.op for node in graph.nodes)

    assert covered == set(OPS)


@pytest.mark.parametrize("name, reason", sorted(SKIPPED.items()))
def test_rejected_case_skipped(cases, tmp_path, name, reason):
    result = run_case(cases[name], tmp_path)

    assert result.status == "skipped"
    assert reason in result.reason


def test_every_case_imports_or_rejects(cases, tmp_path):
    """The importer ends every ONNX test model in a graph or a BonsaiError, never another exception."""
    model_path = tmp_path / "model.onnx"
    accepted = 0
    for case in cases.values():
        onnx.save(case.model, str(model_path))
        try:
            import_onnx(model_path, "conformance")
            accepted += 1
        except BonsaiError:
            pass
    assert accepted > 50


def test_planted_kernel_bug_fails(cases, tmp_path, monkeypatch):
    """A wrong float kernel makes the case fail, so a pass means the C was compared."""
    original = conformance.render

    def render_with_bug(*args, **kwargs):
        files = original(*args, **kwargs)
        name = next(n for n in files if n.endswith("_conv2d_f32.c"))
        files[name] = files[name].replace("total + p->bias[oc]", "total - p->bias[oc]")
        return files

    monkeypatch.setattr(conformance, "render", render_with_bug)
    result = run_case(cases["test_Conv2d"], tmp_path)

    assert result.status == "failed"
    assert ", C:" in result.reason


def test_table_lists_every_case():
    results = [
        conformance.Result("node", "test_a", ["Relu"], "passed"),
        conformance.Result("node", "test_b", ["Mul"], "skipped", "Mul node 'y': op not supported"),
        conformance.Result("pytorch-converted", "test_C", ["Conv"], "failed", "a | b", ["note"]),
    ]

    text = markdown(results, "python -m bonsai_mcu.conformance")

    assert "3 cases: 1 passed, 1 skipped, 1 failed." in text
    assert "| test_a | Relu | passed |  |" in text
    assert "| test_b | Mul | skipped | Mul node 'y': op not supported |" in text
    assert "| test_C | Conv | failed | note; a \\| b |" in text
    assert "| Relu | 1 | 0 | 0 |" in text


def test_freeze_inputs_makes_initializers(cases):
    case = cases["test_conv_with_strides_padding"]
    inputs, _ = case.data_sets[0]

    frozen = conformance.freeze_inputs(case.model, inputs)

    assert [value.name for value in frozen.graph.input] == [case.model.graph.input[0].name]
    stored = {init.name: init for init in frozen.graph.initializer}
    np.testing.assert_array_equal(numpy_helper.to_array(stored["W"]), inputs[1])
