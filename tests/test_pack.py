"""Pack stage: five trits per byte in base 3."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bonsai_mcu.pack import TRITS_PER_BYTE, pack_trits, pack_weights, packed_trit_bytes, unpack_trits


def test_byte_values():
    # byte = sum_j (t_j + 1) * 3**j, t_0 in the least significant digit.
    assert pack_trits(np.array([-1, -1, -1, -1, -1])).tolist() == [0]
    assert pack_trits(np.array([0, 0, 0, 0, 0])).tolist() == [121]
    assert pack_trits(np.array([1, 1, 1, 1, 1])).tolist() == [242]
    assert pack_trits(np.array([1, -1, -1, -1, -1])).tolist() == [2]
    assert pack_trits(np.array([-1, -1, -1, -1, 1])).tolist() == [162]
    assert pack_trits(np.array([0, 1, -1, 0, 1])).tolist() == [1 + 2 * 3 + 0 * 9 + 1 * 27 + 2 * 81]


def test_padding_with_zero_trits():
    # Seven trits: the second byte stores two trits, then three zero trits (digit 1).
    packed = pack_trits(np.array([1, 1, 1, 1, 1, -1, 1]))
    assert packed.tolist() == [242, 0 + 2 * 3 + 1 * 9 + 1 * 27 + 1 * 81]
    assert pack_trits(np.array([], dtype=np.int8)).size == 0


def test_packed_sizes():
    assert [packed_trit_bytes(n) for n in (0, 1, 4, 5, 6, 10, 11)] == [0, 1, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("count", [1, 5, 6, 127, 128, 1000, 22016])
def test_bits_per_weight(count):
    packed = pack_trits(np.zeros(count, dtype=np.int8))
    assert packed.dtype == np.uint8
    assert packed.size == -(-count // TRITS_PER_BYTE)
    if count % TRITS_PER_BYTE == 0:
        assert 8 * packed.size / count == 1.6
    assert 8 * packed.size / count <= 1.6 + 8 / count


def test_rejects_values_outside_trits():
    with pytest.raises(ValueError, match="outside"):
        pack_trits(np.array([0, 2, -1]))
    with pytest.raises(ValueError, match="outside"):
        pack_trits(np.array([-2]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1, 1), max_size=64))
def test_round_trip(values):
    trits = np.array(values, dtype=np.int8)
    packed = pack_trits(trits)
    assert packed.max(initial=0) <= 242
    np.testing.assert_array_equal(unpack_trits(packed, trits.size), trits)


def test_round_trip_matrix_order():
    rng = np.random.default_rng(0)
    trits = rng.integers(-1, 2, size=(7, 13)).astype(np.int8)
    packed = pack_weights(trits, "ternary")
    np.testing.assert_array_equal(unpack_trits(packed, trits.size).reshape(7, 13), trits)


def test_int8_weights_stored_as_bytes():
    values = np.array([[-128, -1, 0], [1, 127, 5]], dtype=np.int8)
    stored = pack_weights(values, "int8")
    assert stored.dtype == np.uint8
    assert stored.tolist() == [128, 255, 0, 1, 127, 5]
