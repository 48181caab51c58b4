"""The intermediate representation shared by every pipeline stage.

Tensors carry their physical shape: the order in which the generated C
stores them. Spatial tensors are channels-last (NHWC, or NLC for 1-D
convolutions). `perm` maps a physical tensor back to the ONNX (logical)
order: `logical = physical.transpose(inverse(perm))`, that is, physical axis
i is logical axis `perm[i]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class QParams:
    """Affine int8 quantization of one tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def quantize(self, values: np.ndarray) -> np.ndarray:
        scaled = np.asarray(values, dtype=np.float64) / self.scale
        rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
        return np.clip(rounded + self.zero_point, -128, 127).astype(np.int8)

    def quantize_float32(self, values: np.ndarray) -> np.ndarray:
        """Quantize exactly as the generated C helper NAME_quantize does.

        The C divides by the float32 scale in float32, adds 0.5f to the
        magnitude and truncates, then adds the zero point and saturates;
        values at or beyond 512 steps (and NaN) saturate first. Inputs the
        reference runs on go through this, so the C API and verify agree
        bit for bit.
        """
        scale = np.float32(self.scale)
        half = np.float32(0.5)
        with np.errstate(invalid="ignore", over="ignore"):
            scaled = (np.asarray(values, dtype=np.float32) / scale).astype(np.float32)
            scaled = np.where(np.isnan(scaled), np.float32(-512.0), scaled)
            scaled = np.clip(scaled, np.float32(-512.0), np.float32(512.0)).astype(np.float32)
            magnitude = np.floor((np.abs(scaled) + half).astype(np.float32))
        rounded = np.where(scaled >= 0, magnitude, -magnitude).astype(np.int64)
        return np.clip(rounded + self.zero_point, -128, 127).astype(np.int8)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float64) - self.zero_point) * self.scale


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    perm: tuple[int, ...] = ()
    qparams: QParams | None = None

    def __post_init__(self) -> None:
        if not self.perm:
            self.perm = tuple(range(len(self.shape)))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def logical_shape(self) -> tuple[int, ...]:
        logical = [0] * len(self.shape)
        for physical_axis, logical_axis in enumerate(self.perm):
            logical[logical_axis] = self.shape[physical_axis]
        return tuple(logical)

    def to_physical(self, logical: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(logical, self.perm))

    def to_logical(self, physical: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(physical.reshape(self.shape), np.argsort(self.perm)))


@dataclass
class Node:
    """One operation of the IR.

    `op` is one of the IR op names listed in `OPS`. Weighted ops keep their
    float weights in `weights` (Conv: [O, KH, KW, Cin/group], Dense: [O, K])
    and `bias` ([O]); `attrs` holds geometry and the fused activation.
    """

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    # Filled by the quantize stage: integer parameters the kernels use.
    quant: dict = field(default_factory=dict)


OPS = (
    "Conv", "Dense", "Add", "AveragePool", "MaxPool", "Softmax", "Clamp",
    "Lut", "Transpose", "Reshape",
)

# Ops whose float weights the quantizer turns into trits or int8.
WEIGHTED_OPS = ("Conv", "Dense")


@dataclass
class Graph:
    name: str
    tensors: dict[str, Tensor]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    source: str = ""
    # ONNX names of graph inputs and outputs, parallel to inputs/outputs.
    onnx_inputs: list[str] = field(default_factory=list)
    onnx_outputs: list[str] = field(default_factory=list)

    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [node for node in self.nodes if tensor in node.inputs]


def conv_macs(node: Node, graph: Graph) -> int:
    out = graph.tensors[node.outputs[0]]
    kernel_h, kernel_w = node.attrs["kernel"]
    per_output = kernel_h * kernel_w * node.attrs["in_channels"] // node.attrs["group"]
    return out.size * per_output


def node_macs(node: Node, graph: Graph) -> int:
    """Count multiply-accumulates of one node (0 for data movement ops)."""
    if node.op == "Conv":
        return conv_macs(node, graph)
    if node.op == "Dense":
        out = graph.tensors[node.outputs[0]]
        return out.size * node.weights.shape[1]
    return 0
