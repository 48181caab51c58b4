"""Quantization-aware training of ternary networks in PyTorch, and export to ONNX for bonsai-mcu.

Install with `pip install 'bonsai-mcu[train]'` (PyTorch, CPU is enough). The
usual path is four steps:

    from bonsai_mcu.train import convert_to_ternary, quantize_activations, export_onnx

    convert_to_ternary(model)             # Linear, Conv1d, Conv2d -> ternary layers, in place
    model = quantize_activations(model)   # int8 fake quantization where the generated C rounds
    ...                                   # train or fine-tune as usual
    export_onnx(model, example_input, "model.onnx")

The exported file contains weights that are exactly t * s and a
QuantizeLinear -> DequantizeLinear pair with the trained int8 parameters on
every activation, so `bonsai-mcu generate model.onnx` imports the trits
without loss and needs no calibration data.
"""

try:
    import torch  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("bonsai_mcu.train needs PyTorch; install it with: pip install 'bonsai-mcu[train]'") from error

from .activations import ActivationQuantizer, calibrate_activations, quantize_activations
from .export import export_onnx
from .layers import (GRANULARITIES, TernaryConv1d, TernaryConv2d, TernaryLinear, convert_to_ternary,
                     ternarize_weight)

__all__ = [
    "ActivationQuantizer", "GRANULARITIES", "TernaryConv1d", "TernaryConv2d", "TernaryLinear",
    "calibrate_activations", "convert_to_ternary", "export_onnx", "quantize_activations", "ternarize_weight",
]
