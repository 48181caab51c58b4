"""Reading sample files: calibration data and verification inputs.

A one-input model takes an .npy of shape [N, ...rest of the input shape]:
samples stacked along the model's batch axis. A model with several inputs
takes an .npz with one such array per input name, all with the same N.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from . import BonsaiError
from .ir import Graph


def _check_array(path: Path, key: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    where = f"{path}" + (f" [{key}]" if key else "")
    if not np.issubdtype(array.dtype, np.floating):
        raise BonsaiError(f"{where}: dtype {array.dtype}; expected float32 samples")
    if array.ndim != len(expected) or tuple(array.shape[1:]) != tuple(expected[1:]) or array.shape[0] < 1:
        wanted = "[N, " + ", ".join(str(d) for d in expected[1:]) + "]"
        raise BonsaiError(f"{where}: shape {list(array.shape)}; expected {wanted} (samples along the batch axis)")
    if not np.all(np.isfinite(array)):
        raise BonsaiError(f"{where}: contains NaN or infinite values")


def load_samples(path: str | Path, graph: Graph) -> list[list[np.ndarray]]:
    """Load samples; return a list over samples of [one logical array per graph input]."""
    path = Path(path)
    if not path.is_file():
        raise BonsaiError(f"{path}: sample file not found")
    shapes = [graph.tensors[name].logical_shape for name in graph.inputs]

    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise BonsaiError(f"{path}: not a readable .npy or .npz file ({error})") from error

    if isinstance(loaded, np.ndarray):
        if len(shapes) != 1:
            names = ", ".join(graph.onnx_inputs)
            raise BonsaiError(f"{path}: the model has {len(shapes)} inputs ({names}); give an .npz with one array per input name")
        _check_array(path, "", loaded, shapes[0])
        return [[loaded[i:i + 1].astype(np.float64)] for i in range(loaded.shape[0])]

    with loaded:
        arrays = []
        for name, shape in zip(graph.onnx_inputs, shapes):
            if name not in loaded.files:
                raise BonsaiError(f"{path}: no array named '{name}'; the file has {', '.join(loaded.files) or 'none'}")
            array = loaded[name]
            _check_array(path, name, array, shape)
            arrays.append(array)
    counts = {array.shape[0] for array in arrays}
    if len(counts) != 1:
        raise BonsaiError(f"{path}: arrays hold different sample counts {sorted(counts)}")
    return [[array[i:i + 1].astype(np.float64) for array in arrays] for i in range(arrays[0].shape[0])]
