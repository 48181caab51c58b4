"""Ternary Linear, Conv1d and Conv2d layers trained with the straight-through estimator.

Each layer keeps latent float weights. The forward pass uses t * s with
t = clip(round(W / s), -1, 1) (round half away from zero) and s = mean|W|
over each scale group (absmean, as in BitNet b1.58); the backward pass treats
the ternarization as the identity, so the gradient of t * s updates W.

Scale groups follow the layout of bonsai-mcu's quantize stage, so an exported
layer imports without loss. A row is one output channel, flattened in the
order the generated C stores it: [in] for Linear, [kernel..., in/groups]
(channels last) for convolutions. Per channel is one scale per row, per
tensor one scale in all, and group one scale per `group_size` consecutive
weights of a row (the last group may be shorter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GRANULARITIES = ("per-channel", "per-tensor", "group")

# Smallest scale, so that an all-zero group still divides to finite values.
MIN_SCALE = 1e-8


def round_half_away(values: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties away from zero (torch.round rounds ties to even)."""
    return torch.sign(values) * torch.floor(torch.abs(values) + 0.5)


def weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """Flatten [O, I, *kernel] weights into rows [O, K] in the C's order: [O, *kernel, I]."""
    if weight.dim() > 2:
        weight = weight.movedim(1, -1)
    return weight.reshape(weight.shape[0], -1)


def weight_from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of weight_rows for weights of `shape`."""
    if len(shape) <= 2:
        return rows.reshape(shape)
    channels_last = (shape[0], *shape[2:], shape[1])
    return rows.reshape(channels_last).movedim(-1, 1)


def ternarize_weight(weight: torch.Tensor, granularity: str = "per-channel",
                     group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternarize weights with absmean scales.

    Returns (trits, scales): trits in {-1, 0, 1} with the shape of `weight`,
    scales [O or 1, groups] in the weight's dtype (per tensor: [1, 1]).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity '{granularity}' is not one of {', '.join(GRANULARITIES)}")
    rows = weight_rows(weight)
    out_channels, depth = rows.shape

    if granularity == "per-tensor":
        groups, counts = rows.reshape(1, 1, -1), torch.full((1, 1), rows.numel(), dtype=rows.dtype)
    elif granularity == "per-channel":
        groups, counts = rows.reshape(out_channels, 1, depth), torch.full((1, 1), depth, dtype=rows.dtype)
    else:
        if group_size < 1:
            raise ValueError(f"group_size {group_size} must be positive")
        count = -(-depth // group_size)
        groups = F.pad(rows, (0, count * group_size - depth)).reshape(out_channels, count, group_size)
        counts = torch.full((1, count), group_size, dtype=rows.dtype)
        counts[0, -1] = depth - (count - 1) * group_size

    scales = torch.clamp(groups.abs().sum(dim=2) / counts.to(rows.device), min=MIN_SCALE)
    trits = torch.clamp(round_half_away(groups / scales[..., None]), -1, 1)
    trit_rows = trits.reshape(trits.shape[0], -1)[:, :depth] if granularity == "group" else trits.reshape(rows.shape)
    return weight_from_rows(trit_rows, weight.shape), scales


def ternary_values(weight: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """Return t * s with the shape of `weight`: every scale group holds only -s, 0 and +s."""
    trits, scales = ternarize_weight(weight, granularity, group_size)
    rows = weight_rows(trits)
    depth = rows.shape[1]
    per_weight = scales.expand(rows.shape[0], -1)
    if granularity == "group":
        per_weight = per_weight.repeat_interleave(group_size, dim=1)[:, :depth]
    return weight_from_rows(rows * per_weight, weight.shape)


class _TernaryMixin:
    """Weight handling shared by the ternary layers."""

    granularity: str
    group_size: int
    weight: nn.Parameter

    def _init_ternary(self, granularity: str, group_size: int) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity '{granularity}' is not one of {', '.join(GRANULARITIES)}")
        self.granularity = granularity
        self.group_size = group_size
        # Set by export_onnx: the exact t * s, traced as a constant.
        self.frozen_weight: torch.Tensor | None = None

    def ternary_weight(self) -> torch.Tensor:
        """Return t * s of the current latent weights, without gradient."""
        with torch.no_grad():
            return ternary_values(self.weight, self.granularity, self.group_size)

    def effective_weight(self) -> torch.Tensor:
        """Return the weights the forward pass multiplies by: t * s, with the straight-through gradient."""
        if self.frozen_weight is not None:
            return self.frozen_weight
        quantized = ternary_values(self.weight, self.granularity, self.group_size)
        return self.weight + (quantized - self.weight).detach()

    def extra_repr(self) -> str:
        size = f", group_size={self.group_size}" if self.granularity == "group" else ""
        return super().extra_repr() + f", granularity={self.granularity}{size}"


class TernaryLinear(_TernaryMixin, nn.Linear):
    """nn.Linear whose forward pass uses ternary weights t * s."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 granularity: str = "per-channel", group_size: int = 128, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_ternary(granularity, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class TernaryConv1d(_TernaryMixin, nn.Conv1d):
    """nn.Conv1d whose forward pass uses ternary weights t * s."""

    def __init__(self, *args, granularity: str = "per-channel", group_size: int = 128, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_ternary(granularity, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class TernaryConv2d(_TernaryMixin, nn.Conv2d):
    """nn.Conv2d whose forward pass uses ternary weights t * s."""

    def __init__(self, *args, granularity: str = "per-channel", group_size: int = 128, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_ternary(granularity, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


TERNARY_LAYERS = (TernaryLinear, TernaryConv1d, TernaryConv2d)


def _ternary_copy(module: nn.Module, granularity: str, group_size: int) -> nn.Module:
    """Build the ternary layer that replaces `module`, with its weights and bias."""
    options = {"granularity": granularity, "group_size": group_size}
    factory = {"device": module.weight.device, "dtype": module.weight.dtype}
    if isinstance(module, nn.Linear):
        layer = TernaryLinear(module.in_features, module.out_features, module.bias is not None, **options, **factory)
    else:
        kind = TernaryConv1d if isinstance(module, nn.Conv1d) else TernaryConv2d
        layer = kind(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                     padding=module.padding, dilation=module.dilation, groups=module.groups,
                     bias=module.bias is not None, padding_mode=module.padding_mode, **options, **factory)
    with torch.no_grad():
        layer.weight.copy_(module.weight)
        if module.bias is not None:
            layer.bias.copy_(module.bias)
    layer.train(module.training)
    return layer


def convert_to_ternary(model: nn.Module, granularity: str = "per-channel", group_size: int = 128,
                       keep: tuple[str, ...] | list[str] = ()) -> nn.Module:
    """Replace every nn.Linear, nn.Conv1d and nn.Conv2d of `model` by its ternary layer, in place.

    Weights and biases are copied. `keep` lists qualified module names (as
    model.named_modules() gives them) to leave in float, for layers that
    `bonsai-mcu --keep-int8` keeps wider. Returns `model`.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity '{granularity}' is not one of {', '.join(GRANULARITIES)}")
    names = {name for name, _ in model.named_modules()}
    unknown = sorted(set(keep) - names)
    if unknown:
        raise ValueError(f"keep: no module named {', '.join(unknown)}; names come from model.named_modules()")

    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            if qualified in keep or isinstance(child, TERNARY_LAYERS):
                continue
            if type(child) in (nn.Linear, nn.Conv1d, nn.Conv2d):
                setattr(parent, child_name, _ternary_copy(child, granularity, group_size))
    return model
