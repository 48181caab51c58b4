"""Plan stage: the arena planner on made-up lifetimes, with no ONNX file."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bonsai_mcu.ir import Graph, Node, Tensor
from bonsai_mcu.plan import Buffer, align_up, graph_buffers, lower_bound, place_buffers, plan_graph


def byte_ranges_overlap(a_offset: int, a: Buffer, b_offset: int, b: Buffer) -> bool:
    return a_offset < b_offset + b.size and b_offset < a_offset + a.size


def check_plan(buffers: list[Buffer], offsets: dict[str, int], size: int, alignment: int) -> None:
    for i, a in enumerate(buffers):
        assert offsets[a.name] % alignment == 0, a.name
        assert offsets[a.name] + a.size <= size, a.name
        for b in buffers[i + 1:]:
            if a.overlaps_in_time(b):
                assert not byte_ranges_overlap(offsets[a.name], a, offsets[b.name], b), (a, b)
    assert size % alignment == 0
    assert size >= lower_bound(buffers)


def test_disjoint_lifetimes_share_bytes():
    buffers = [Buffer("a", 100, 0, 1), Buffer("b", 100, 2, 3)]
    offsets, size = place_buffers(buffers)
    assert offsets == {"a": 0, "b": 0}
    assert size == 100


def test_chain_reuses_every_other_buffer():
    # a -> b -> c -> d: each buffer lives across two steps, neighbours overlap.
    buffers = [Buffer("a", 64, 0, 1), Buffer("b", 64, 1, 2), Buffer("c", 64, 2, 3), Buffer("d", 64, 3, 4)]
    offsets, size = place_buffers(buffers)
    check_plan(buffers, offsets, size, 4)
    assert size == 128
    assert offsets["a"] == offsets["c"]
    assert offsets["b"] == offsets["d"]
    assert offsets["a"] != offsets["b"]


def test_overlap_at_one_step_counts():
    # Lifetimes are inclusive: [0, 2] and [2, 4] are alive together at step 2.
    buffers = [Buffer("a", 10, 0, 2), Buffer("b", 10, 2, 4)]
    offsets, size = place_buffers(buffers, alignment=1)
    assert not byte_ranges_overlap(offsets["a"], buffers[0], offsets["b"], buffers[1])
    assert size == 20


def test_small_buffer_fills_gap():
    # big1 [0, 1] and big2 [1, 2] sit at 0 and 100; "late" is alive with big2 only and
    # fits in the bytes big1 leaves free.
    buffers = [Buffer("big1", 100, 0, 1), Buffer("big2", 100, 1, 2), Buffer("late", 40, 2, 3)]
    offsets, size = place_buffers(buffers)
    check_plan(buffers, offsets, size, 4)
    assert size == 200
    assert offsets["late"] == offsets["big1"]


def test_lower_bound_hand_example():
    buffers = [Buffer("a", 10, 0, 3), Buffer("b", 20, 1, 1), Buffer("c", 5, 2, 4), Buffer("d", 30, 4, 5)]
    # step 0: 10; step 1: 30; step 2: 15; step 3: 15; step 4: 35; step 5: 30
    assert lower_bound(buffers) == 35
    assert lower_bound([]) == 0
    assert lower_bound([Buffer("only", 7, 3, 3)]) == 7


def test_alignment_of_offsets_and_size():
    buffers = [Buffer("a", 3, 0, 2), Buffer("b", 5, 1, 3), Buffer("c", 1, 2, 2)]
    offsets, size = place_buffers(buffers, alignment=8)
    check_plan(buffers, offsets, size, 8)
    assert sorted(offsets.values()) == [0, 8, 16]
    assert size == 24
    assert align_up(0, 8) == 0
    assert align_up(1, 8) == 8
    assert align_up(16, 8) == 16


def test_empty_plan():
    assert place_buffers([]) == ({}, 0)


lifetimes = st.lists(
    st.tuples(st.integers(1, 300), st.integers(0, 12), st.integers(0, 6)),
    min_size=1, max_size=14,
)


@settings(max_examples=300, deadline=None)
@given(lifetimes, st.sampled_from([1, 4, 8, 16]))
def test_overlapping_lifetimes_never_share_bytes(specs, alignment):
    buffers = [Buffer(f"b{i}", size, first, first + length) for i, (size, first, length) in enumerate(specs)]
    offsets, size = place_buffers(buffers, alignment)
    check_plan(buffers, offsets, size, alignment)


# -- buffers from an IR graph (built by hand) -------------------------------------------


def hand_graph() -> Graph:
    """x -> Dense -> h -> Reshape (view) -> v -> Clamp -> c -> Dense -> y, sizes 32/16/16/16/8."""
    tensors = {
        "x": Tensor("x", (1, 32)), "h": Tensor("h", (1, 16)), "v": Tensor("v", (4, 4)),
        "c": Tensor("c", (4, 4)), "y": Tensor("y", (1, 8)),
    }
    nodes = [
        Node("Dense", "fc1", ["x"], ["h"], {"rows": 1}, np.zeros((16, 32)), np.zeros(16)),
        Node("Reshape", "view", ["h"], ["v"]),
        Node("Clamp", "clamp", ["v"], ["c"], {"activation": ("clip", 0.0, 1.0)}),
        Node("Dense", "fc2", ["c"], ["y"], {"rows": 1}, np.zeros((8, 16)), np.zeros(8)),
    ]
    return Graph("hand", tensors, nodes, ["x"], ["y"])


def test_graph_buffers_merge_views():
    buffers = {b.name: b for b in graph_buffers(hand_graph())}
    assert set(buffers) == {"x", "h", "c", "y"}
    assert sorted(buffers["h"].tensors) == ["h", "v"]
    assert (buffers["x"].first, buffers["x"].last) == (0, 0)
    assert (buffers["h"].first, buffers["h"].last) == (0, 2)
    assert (buffers["c"].first, buffers["c"].last) == (2, 3)
    # Outputs stay alive past the last node, until the caller copies them out.
    assert (buffers["y"].first, buffers["y"].last) == (3, 4)


def test_plan_graph_offsets():
    plan = plan_graph(hand_graph(), alignment=4)
    assert plan.offsets["v"] == plan.offsets["h"]
    # Live together: x and h at step 0 (48 B), h and c at step 2, c and y at step 3.
    assert plan.lower_bound == 48
    assert plan.arena_size == 48
    assert plan.offsets["x"] != plan.offsets["h"]
    assert plan.offsets["c"] != plan.offsets["h"]
    assert plan.offsets["y"] != plan.offsets["c"]
    assert plan.scratch_size == 0
