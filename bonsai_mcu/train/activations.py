"""Int8 fake quantization of activations, placed where the generated C quantizes them.

The generated C stores the graph inputs and the output of every Conv, Gemm,
MatMul, Add and table op (Sigmoid, Tanh, ...) as int8, after the ReLU or Clip
that the importer fuses into the op. Reshapes, pools and unfused clamps keep
their input's int8 parameters. `quantize_activations` traces a model with
torch.fx and inserts an ActivationQuantizer at each of those points, so
training applies the rounding the C performs.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..quantize import qparams_from_range
from .layers import TERNARY_LAYERS, round_half_away

WEIGHTED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
# ReLU and Clip fuse into the Conv, Gemm, MatMul or Add before them.
FUSED_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
FUSED_ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp, torch.clip)
FUSED_ACTIVATION_METHODS = ("relu", "clamp", "clip")
# Unary ops the C evaluates through a 256-entry table, requantizing their output.
TABLE_MODULES = (nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Hardsigmoid, nn.Hardswish, nn.ELU, nn.Softplus)
TABLE_FUNCTIONS = (torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.leaky_relu, F.hardsigmoid, F.hardswish,
                   F.elu, F.softplus)
TABLE_METHODS = ("sigmoid", "tanh")
ADD_FUNCTIONS = (operator.add, torch.add)

INT8_MIN, INT8_MAX = -128, 127


class _QuantizeDequantize(torch.autograd.Function):
    """The fake quantization as the ONNX exporter traces it: a QuantizeLinear -> DequantizeLinear pair."""

    @staticmethod
    def forward(ctx, x, scale: float, zero_point: int):
        return fake_quantize(x, scale, zero_point)

    @staticmethod
    def symbolic(g, x, scale: float, zero_point: int):
        scale_value = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        zero_point_value = g.op("Constant", value_t=torch.tensor(zero_point, dtype=torch.int8))
        quantized = g.op("QuantizeLinear", x, scale_value, zero_point_value)
        return g.op("DequantizeLinear", quantized, scale_value, zero_point_value)


def fake_quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Round x to the int8 grid as the C does; the gradient passes where x lies inside the grid's range.

    q = clamp(round_half_away(x / scale) + zero_point, -128, 127), returned as
    (q - zero_point) * scale.
    """
    scaled = x / scale
    codes = torch.clamp(round_half_away(scaled) + zero_point, INT8_MIN, INT8_MAX)
    values = (codes - zero_point) * scale
    inside = ((scaled + zero_point) >= INT8_MIN - 0.5) & ((scaled + zero_point) <= INT8_MAX + 0.5)
    return values.detach() + (x - x.detach()) * inside


class ActivationQuantizer(nn.Module):
    """Int8 fake quantization of one activation tensor with affine per-tensor parameters.

    In training mode the module tracks the tensor's range: the first batch's
    min and max, then an exponential moving average with `momentum` (or the
    running min and max while calibrate_activations runs). The int8
    parameters follow bonsai-mcu's quantize stage: the range is widened to
    include 0, scale = (max - min) / 255 rounded to float32 (the precision
    ONNX stores it in), and zero_point = round(-128 - min / scale).
    """

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("observed", torch.tensor(False))
        # Set by calibrate_activations: accumulate min and max instead of averaging.
        self.accumulate = False
        # Set by export_onnx: emit a QuantizeLinear -> DequantizeLinear pair.
        self.exporting = False

    def observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().to(self.low), x.detach().max().to(self.high)
        if not bool(self.observed):
            self.low.copy_(low)
            self.high.copy_(high)
            self.observed.fill_(True)
        elif self.accumulate:
            self.low.copy_(torch.minimum(self.low, low))
            self.high.copy_(torch.maximum(self.high, high))
        else:
            self.low.lerp_(low, self.momentum)
            self.high.lerp_(high, self.momentum)

    def qparams(self) -> tuple[float, int]:
        """Return (scale, zero_point) of the int8 grid; scale is a float32 value."""
        if not bool(self.observed):
            raise RuntimeError("ActivationQuantizer has no range yet; run the model in training mode or "
                               "call calibrate_activations on sample inputs first")
        params = qparams_from_range(float(self.low), float(self.high))
        return float(np.float32(params.scale)), int(params.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observe(x)
        if not bool(self.observed):
            return x
        scale, zero_point = self.qparams()
        if self.exporting:
            return _QuantizeDequantize.apply(x, scale, zero_point)
        return fake_quantize(x, scale, zero_point)

    def extra_repr(self) -> str:
        if not bool(self.observed):
            return "range=unobserved"
        scale, zero_point = self.qparams()
        return f"range=[{float(self.low):.4g}, {float(self.high):.4g}], scale={scale:.6g}, zero_point={zero_point}"


# -- placement ----------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Keeps ternary layers and quantizers as single calls, like the torch.nn layers."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, TERNARY_LAYERS + (ActivationQuantizer,)) or super().is_leaf_module(
            module, qualified_name)


def _module(graph_module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return graph_module.get_submodule(node.target) if node.op == "call_module" else None


def _is_fused_activation(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(graph_module, node), FUSED_ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in FUSED_ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in FUSED_ACTIVATION_METHODS


def _is_table_op(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(graph_module, node), TABLE_MODULES)
    if node.op == "call_function":
        return node.target in TABLE_FUNCTIONS
    return node.op == "call_method" and node.target in TABLE_METHODS


def _is_tensor_add(node: fx.Node) -> bool:
    is_add = (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target == "add")
    return is_add and len(node.args) >= 2 and all(isinstance(arg, fx.Node) for arg in node.args[:2])


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def quantization_points(graph_module: fx.GraphModule) -> list[fx.Node]:
    """List the traced nodes whose outputs the generated C stores with their own int8 parameters."""
    points = []
    for node in graph_module.graph.nodes:
        if node.op == "placeholder" or _is_table_op(graph_module, node):
            points.append(node)
            continue
        weighted = isinstance(_module(graph_module, node), WEIGHTED_MODULES)
        if not weighted and not _is_tensor_add(node):
            continue

        # Follow the ops the importer folds or fuses into this one: a
        # BatchNormalization after a Conv or Gemm, then one ReLU or Clip.
        end = node
        user = _only_user(end)
        if weighted and user is not None and isinstance(_module(graph_module, user), NORM_MODULES):
            end = user
            user = _only_user(end)
        if user is not None and _is_fused_activation(graph_module, user):
            end = user
        points.append(end)
    return points


def quantize_activations(model: nn.Module, momentum: float = 0.1) -> fx.GraphModule:
    """Return `model` traced by torch.fx with an ActivationQuantizer after every quantization point.

    The result shares its parameters and layers with `model`; train and export
    the returned module. Models that torch.fx cannot trace (data-dependent
    control flow) need ActivationQuantizer modules placed by hand.
    """
    graph = _Tracer().trace(model)
    graph_module = fx.GraphModule(model, graph, model.__class__.__name__)
    for index, point in enumerate(quantization_points(graph_module)):
        name = f"activation_quantizer_{index}"
        graph_module.add_submodule(name, ActivationQuantizer(momentum))
        with graph_module.graph.inserting_after(point):
            quantizer = graph_module.graph.call_module(name, (point,))
        point.replace_all_uses_with(quantizer, delete_user_cb=lambda user, q=quantizer: user is not q)
    graph_module.recompile()
    graph_module.train(model.training)
    return graph_module


def activation_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [module for module in model.modules() if isinstance(module, ActivationQuantizer)]


@torch.no_grad()
def calibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set every quantizer's range to the min and max of its input over `batches`, without training.

    The rest of the model runs in eval mode (BatchNorm statistics and Dropout
    stay untouched); the model is left in eval mode.
    """
    quantizers = activation_quantizers(model)
    if not quantizers:
        raise ValueError("the model has no ActivationQuantizer; call quantize_activations first")
    model.eval()
    for quantizer in quantizers:
        quantizer.observed.fill_(False)
        quantizer.accumulate = True
        quantizer.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for quantizer in quantizers:
            quantizer.accumulate = False
            quantizer.eval()
