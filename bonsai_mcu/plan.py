"""Plan stage: execution order, tensor lifetimes and offsets in one static arena.

The planner works on plain data: buffers with a size and a lifetime
[first_step, last_step] (inclusive), placed greedily, largest first, at the
lowest offset that does not overlap any buffer alive at the same time. It
reports the lower bound (the largest total size of buffers alive at one
step) next to the arena size it reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def graph_buffers(graph: Graph) -> list[Buffer]:
    """Derive one buffer per group of tensors that share bytes (Reshape views)."""
    root: dict[str, str] = {name: name for name in graph.tensors}

    def find(name: str) -> str:
        while root[name] != name:
            name = root[name]
        return name

    for node in graph.nodes:
        if node.op == "Reshape":
            root[find(node.outputs[0])] = find(node.inputs[0])

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

    return [Buffer(key, graph.tensors[key].size, span[0], span[1], members[key])
            for key, span in spans.items()]


def plan_graph(graph: Graph, alignment: int = 4) -> ArenaPlan:
    buffers = graph_buffers(graph)
    buffer_offsets, size = place_buffers(buffers, alignment)
    offsets = {tensor: buffer_offsets[b.name] for b in buffers for tensor in b.tensors}
    # The portable kernels work in place of their loops and need no scratch memory.
    return ArenaPlan(offsets, size, lower_bound(buffers), 0, buffers, buffer_offsets)
