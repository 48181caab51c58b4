"""Plan stage: execution order, tensor lifetimes and offsets in one static arena.

The planner works on plain data: buffers with a size and a lifetime
[first_step, last_step] (inclusive), placed greedily, largest first, at the
lowest offset that does not overlap any buffer alive at the same time. It
reports the lower bound (the largest total size of buffers alive at one
step) next to the arena size it reached.

Kernel choices (bonsai_mcu.kernels) add two things: a node whose kernel runs
in place writes its output into its input's buffer when nothing reads the
input afterwards, and a node's kernel scratch is a buffer alive during that
node only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .ir import Graph


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    tensors: list[str] = field(default_factory=list)

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class ArenaPlan:
    offsets: dict[str, int]
    arena_size: int
    lower_bound: int
    scratch_size: int
    buffers: list[Buffer]
    buffer_offsets: dict[str, int]
    # Offset of each node's kernel scratch, by node index; scratch_size is the largest one.
    scratch_offsets: dict[int, int] = field(default_factory=dict)
    # Lower bound of the same graph planned tensor by tensor: no node in place, no scratch.
    plain_lower_bound: int = 0
    # Indices of the nodes whose output shares their input's buffer.
    in_place: list[int] = field(default_factory=list)


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def lower_bound(buffers: list[Buffer]) -> int:
    """Return the largest sum of sizes of buffers alive at one step."""
    if not buffers:
        return 0
    steps = range(min(b.first for b in buffers), max(b.last for b in buffers) + 1)
    return max(sum(b.size for b in buffers if b.first <= step <= b.last) for step in steps)


def place_buffers(buffers: list[Buffer], alignment: int = 4) -> tuple[dict[str, int], int]:
    """Place buffers greedily, largest first; return offsets by buffer name and arena size."""
    order = sorted(buffers, key=lambda b: (-b.size, b.first, b.name))
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    for buffer in order:
        conflicts = sorted(((offset, offset + other.size) for other, offset in placed
                            if other.overlaps_in_time(buffer)))
        offset = 0
        for start, end in conflicts:
            if offset + buffer.size <= start:
                break
            offset = max(offset, align_up(end, alignment))
        offsets[buffer.name] = offset
        placed.append((buffer, offset))
    size = max((offsets[b.name] + b.size for b in buffers), default=0)
    return offsets, align_up(size, alignment)


def graph_buffers(graph: Graph, in_place: Sequence[int] = ()) -> list[Buffer]:
    """Derive one buffer per group of tensors that share bytes.

    Reshape views always share their input's bytes. A node listed in `in_place` shares
    its output with its first input when no later node reads that input and it is not a
    graph output; the buffer is as large as its largest tensor.
    """
    return _grouped_buffers(graph, in_place)[0]


def _grouped_buffers(graph: Graph, in_place: Sequence[int]) -> tuple[list[Buffer], list[int]]:
    """Return the buffers and the nodes of `in_place` that did share their input's buffer."""
    root: dict[str, str] = {name: name for name in graph.tensors}

    def find(name: str) -> str:
        while root[name] != name:
            name = root[name]
        return name

    for node in graph.nodes:
        if node.op == "Reshape":
            root[find(node.outputs[0])] = find(node.inputs[0])

    shared = []
    for index in sorted(in_place):
        node = graph.nodes[index]
        source, target = find(node.inputs[0]), find(node.outputs[0])
        readers = [step for step, other in enumerate(graph.nodes)
                   if any(find(name) == source for name in other.inputs)]
        outputs = {find(name) for name in graph.outputs}
        if source != target and max(readers) == index and source not in outputs:
            root[target] = source
            shared.append(index)
    return _spans(graph, find), shared


def _spans(graph: Graph, find) -> list[Buffer]:
    end = len(graph.nodes)
    spans: dict[str, list[int]] = {}
    members: dict[str, list[str]] = {}

    def touch(tensor: str, step: int) -> None:
        key = find(tensor)
        span = spans.setdefault(key, [step, step])
        span[0], span[1] = min(span[0], step), max(span[1], step)
        if tensor not in members.setdefault(key, []):
            members[key].append(tensor)

    for name in graph.inputs:
        touch(name, 0)
    for step, node in enumerate(graph.nodes):
        for name in node.inputs + node.outputs:
            touch(name, step)
    for name in graph.outputs:
        touch(name, end)

    return [Buffer(key, max(graph.tensors[name].size for name in members[key]), span[0], span[1], members[key])
            for key, span in spans.items()]


def plan_graph(graph: Graph, alignment: int = 4, kernels: Sequence | None = None) -> ArenaPlan:
    """Plan the arena. kernels: one choice per node (bonsai_mcu.kernels.KernelChoice, or any
    object with `scratch` bytes and an `in_place` flag); None means the portable reference
    kernels, which need no scratch and never run in place."""
    kernels = list(kernels or [])
    in_place = [index for index, choice in enumerate(kernels) if choice.in_place]
    buffers, shared = _grouped_buffers(graph, in_place)
    scratch = {index: choice.scratch for index, choice in enumerate(kernels) if choice.scratch > 0}
    scratch_buffers = [Buffer(scratch_name(index), size, index, index) for index, size in scratch.items()]
    buffer_offsets, size = place_buffers(buffers + scratch_buffers, alignment)
    offsets = {tensor: buffer_offsets[b.name] for b in buffers for tensor in b.tensors}
    scratch_offsets = {index: buffer_offsets[scratch_name(index)] for index in scratch}
    plain = lower_bound(graph_buffers(graph))
    return ArenaPlan(offsets, size, lower_bound(buffers + scratch_buffers), max(scratch.values(), default=0),
                     buffers + scratch_buffers, buffer_offsets, scratch_offsets, plain, shared)


def scratch_name(index: int) -> str:
    """Return the buffer name of node `index`'s kernel scratch (no tensor has this name)."""
    return f"scratch of node {index}"
