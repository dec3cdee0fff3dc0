"""Numba neighbour lists (CPU and CUDA), in the spirit of vesin.

Conventions: positions [n, 3] float64 in Å; cell [3, 3] in Å with lattice vectors as
rows (ASE); pbc a bool or 3 bools; edges returned in ASE's ``'ijS'`` form: int64
arrays ``i`` [e], ``j`` [e] and integer cell shifts ``S`` [e, 3] with
``r_ij = positions[j] - positions[i] + S @ cell`` and ``|r_ij| < cutoff``, both
directions of every pair, sorted by ``(i, j, S0, S1, S2)``.

- :func:`neighbor_list` — one structure, O(n) cell list on the CPU.
- :func:`batched_neighbor_list` — several structures stored back to back.
- :class:`NeighborList` — reusable list with a Verlet skin for MD.
- :mod:`mtsim.kernels.cuda` — the same list computed on a GPU, identical output
  (imported lazily: ``import mtsim.kernels`` does not import ``numba.cuda``).
- :func:`cuda_available` — whether the CUDA kernel can run here.
"""

import functools
import importlib
import warnings

import numpy as np

from mtsim.kernels.cpu import batched_neighbor_list, neighbor_list
from mtsim.kernels.skin import NeighborList

__all__ = ["NeighborList", "batched_neighbor_list", "cuda_available", "neighbor_list"]


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """True if numba-cuda is installed, a GPU (or the CUDA simulator) is usable, and the kernel compiles and runs
    (tried once on a one-atom cell). A GPU whose kernel fails (e.g. a numba-cuda release broken by the installed
    numpy) gives a warning naming the error, and the CPU kernel (identical output) is used instead."""
    try:
        from numba import cuda
    except ImportError:
        return False
    try:
        if not cuda.is_available():
            return False
    except Exception:  # broken driver installations raise instead of answering
        return False
    try:
        from mtsim.kernels.cuda import neighbor_list_cuda

        neighbor_list_cuda(np.zeros((1, 3)), 3.0 * np.eye(3), True, 1.0)
    except Exception as err:
        warnings.warn(
            f"the CUDA neighbour-list kernel does not run here ({type(err).__name__}: {err}); using the CPU kernel",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def __getattr__(name):
    if name == "cuda":
        return importlib.import_module("mtsim.kernels.cuda")
    raise AttributeError(f"module 'mtsim.kernels' has no attribute {name!r}")
