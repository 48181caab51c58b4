"""Export of a ternary-trained model to the ONNX that bonsai-mcu imports without loss."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from .activations import activation_quantizers
from .layers import TERNARY_LAYERS

# Opset 13 is the first with per-axis QuantizeLinear and the opset the examples use.
DEFAULT_OPSET = 13


@contextlib.contextmanager
def _export_mode(model: nn.Module):
    """Freeze ternary weights to t * s and turn quantizers into QDQ pairs while the exporter traces."""
    layers = [module for module in model.modules() if isinstance(module, TERNARY_LAYERS)]
    quantizers = activation_quantizers(model)
    unobserved = [name for name, module in model.named_modules() if module in quantizers and not module.observed]
    if unobserved:
        raise ValueError(f"activation quantizers {', '.join(unobserved)} have no range yet; train the model "
                         "or call calibrate_activations on sample inputs before export")
    try:
        for layer in layers:
            layer.frozen_weight = layer.ternary_weight()
        for quantizer in quantizers:
            quantizer.exporting = True
        yield
    finally:
        for layer in layers:
            layer.frozen_weight = None
        for quantizer in quantizers:
            quantizer.exporting = False


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path,
                input_names: Sequence[str] = ("input",), output_names: Sequence[str] = ("output",),
                opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` to `path` as ONNX for bonsai-mcu; return the path.

    Ternary layers are written with their weights as float32 t * s, so each
    scale group holds only -s, 0 and +s and the importer recovers the trits
    exactly (--method auto). Every ActivationQuantizer becomes a
    QuantizeLinear -> DequantizeLinear pair carrying its int8 scale and zero
    point, which the importer takes instead of calibrating. `example_input`
    is one sample with batch size 1, the batch the generated C runs.
    """
    if example_input.dim() < 1 or example_input.shape[0] != 1:
        raise ValueError(f"example_input has shape {list(example_input.shape)}; give one sample with batch size 1")
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with _export_mode(model), warnings.catch_warnings():
            # NOTE: the TorchScript-based exporter (dynamo=False) is deprecated in
            # PyTorch 2.9 and later, but it needs no onnxscript and keeps the
            # QuantizeLinear/DequantizeLinear pairs exactly as the quantizers define them.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(model, (example_input,), str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              do_constant_folding=True)
    finally:
        model.train(was_training)
    onnx.checker.check_model(onnx.load(str(path)))
    return path
