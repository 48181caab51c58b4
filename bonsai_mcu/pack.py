"""Pack stage: weight layouts for the kernels.

Ternary weights are stored five trits per byte in base 3 (3**5 = 243 <= 256,
1.6 bits per weight): byte = sum_j (t_j + 1) * 3**j for the five
consecutive trits t_0..t_4 of the stream, so t_0 is the least significant
digit. The stream is the weights in the order the kernels read them
(Conv: [O][KH][KW][Cin/group], Dense: [O][K]); the last byte is padded with
zero trits.
"""

from __future__ import annotations

import numpy as np

TRITS_PER_BYTE = 5
_POWERS = np.array([1, 3, 9, 27, 81], dtype=np.int32)


def packed_trit_bytes(count: int) -> int:
    return -(-count // TRITS_PER_BYTE)


def pack_trits(trits: np.ndarray) -> np.ndarray:
    """Pack a stream of values in {-1, 0, 1} into uint8, five per byte."""
    flat = np.asarray(trits, dtype=np.int32).reshape(-1)
    if flat.size and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("pack_trits: values outside {-1, 0, 1}")
    padded = np.zeros(packed_trit_bytes(flat.size) * TRITS_PER_BYTE, dtype=np.int32)
    padded[:flat.size] = flat
    digits = (padded + 1).reshape(-1, TRITS_PER_BYTE)
    return (digits * _POWERS).sum(axis=1).astype(np.uint8)


def unpack_trits(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of pack_trits: the first `count` trits as int8."""
    values = np.asarray(packed, dtype=np.int32)[:, None] // _POWERS[None, :] % 3
    return (values.reshape(-1)[:count] - 1).astype(np.int8)


def pack_weights(values: np.ndarray, fmt: str) -> np.ndarray:
    """Return the stored bytes of one layer's weights ([O, K] int8 values)."""
    if fmt == "ternary":
        return pack_trits(values)
    return np.asarray(values, dtype=np.int8).reshape(-1).view(np.uint8)
