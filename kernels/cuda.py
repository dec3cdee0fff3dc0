"""CUDA neighbour list (numba-cuda): same edges, same order as the CPU kernel.

:func:`neighbor_list_cuda` takes numpy arrays or device arrays (numba device arrays,
or anything exposing ``__cuda_array_interface__``) and returns numpy arrays, or
device arrays with ``return_device=True``; the edge arrays never leave the GPU then.
Importing this module imports ``numba.cuda``; set ``NUMBA_ENABLE_CUDASIM=1`` before
that to run it on the CUDA simulator (slow; for tests).

Pipeline, one thread per atom, everything on the device
-------------------------------------------------------
1. ``_bounds_kernel``: min/max of the fractional coordinates and a NaN/inf flag,
   copied to the host (7 numbers) to choose the bins (:func:`~._geometry.bin_grid`).
2. ``_bin_kernel`` wraps and bins the atoms and counts atoms per bin; an exclusive
   prefix sum gives the bin starts and ``_place_kernel`` fills the bins. The order of
   atoms within a bin is arbitrary (atomics) and does not affect the output.
3. ``_count_kernel`` counts each receiver's edges; a prefix sum gives the offsets
   (the total is copied to the host to size the output).
4. ``_fill_kernel``: each thread writes its receiver's sort keys (as in the CPU
   kernel) into its segment of ``j``, heap-sorts the segment and decodes it in place,
   so no global sort is needed.

Identical output: the kept edges are exactly those passing the same fused
multiply-add distance test as :func:`mtsim.kernels.cpu.neighbor_list` on the
original positions (``cuda.fma`` here, ``llvm.fma`` there; both are IEEE fma), and
per receiver they are sorted by a unique key. Wrapping, binning and the screening
with wrapped positions work with a margin far above their rounding error (see
:class:`~mtsim.kernels._geometry.BinGrid`), so their rounding, which may differ
between CPU and GPU, cannot change the result.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from mtsim.kernels._geometry import (
    bin_grid,
    decode_image,
    validate_cell_pbc_cutoff,
    validate_positions,
    working_box,
)

_THREADS_PER_BLOCK = 128
_SCAN_CHUNK = 128


def _blocks(n: int) -> int:
    return max(1, (n + _THREADS_PER_BLOCK - 1) // _THREADS_PER_BLOCK)


@cuda.jit(device=True)
def _frac(positions, to_frac, a, k):
    return positions[a, 0] * to_frac[0, k] + positions[a, 1] * to_frac[1, k] + positions[a, 2] * to_frac[2, k]


@cuda.jit(device=True)
def _is_edge(positions, i, j, cell, S0, S1, S2, cutoff2):
    """Whether ``|positions[j] - positions[i] + S @ cell| < cutoff`` (as in the CPU kernel)."""
    a, b, c = float(S0), float(S1), float(S2)
    dx = (positions[j, 0] - positions[i, 0]) + cuda.fma(a, cell[0, 0], cuda.fma(b, cell[1, 0], c * cell[2, 0]))
    dy = (positions[j, 1] - positions[i, 1]) + cuda.fma(a, cell[0, 1], cuda.fma(b, cell[1, 1], c * cell[2, 1]))
    dz = (positions[j, 2] - positions[i, 2]) + cuda.fma(a, cell[0, 2], cuda.fma(b, cell[1, 2], c * cell[2, 2]))
    return cuda.fma(dx, dx, cuda.fma(dy, dy, dz * dz)) < cutoff2


@cuda.jit(cache=True)
def _bounds_kernel(positions, to_frac, frac_min, frac_max, not_finite):
    a = cuda.grid(1)
    if a >= positions.shape[0]:
        return
    for k in range(3):
        if not math.isfinite(positions[a, k]):
            not_finite[0] = 1
        f = _frac(positions, to_frac, a, k)
        cuda.atomic.min(frac_min, k, f)
        cuda.atomic.max(frac_max, k, f)


@cuda.jit(cache=True)
def _bin_kernel(
    positions, cell, to_frac, pbc, origin, bins_per_unit, n_bins, wrap, wrapped, atom_bin, flat_bin, bin_count
):
    a = cuda.grid(1)
    if a >= positions.shape[0]:
        return
    for k in range(3):
        f = _frac(positions, to_frac, a, k)
        wrap[a, k] = 0
        if pbc[k]:
            w = math.floor(f)
            wrap[a, k] = w
            f -= w
        b = math.floor((f - origin[k]) * bins_per_unit[k])
        atom_bin[a, k] = min(max(b, 0), n_bins[k] - 1)
    for x in range(3):
        lattice_shift = wrap[a, 0] * cell[0, x] + wrap[a, 1] * cell[1, x] + wrap[a, 2] * cell[2, x]
        wrapped[a, x] = positions[a, x] - lattice_shift
    flat = (atom_bin[a, 0] * n_bins[1] + atom_bin[a, 1]) * n_bins[2] + atom_bin[a, 2]
    flat_bin[a] = flat
    cuda.atomic.add(bin_count, flat, 1)


@cuda.jit(cache=True)
def _place_kernel(flat_bin, cursor, bin_atoms):
    a = cuda.grid(1)
    if a < flat_bin.shape[0]:
        bin_atoms[cuda.atomic.add(cursor, flat_bin[a], 1)] = a


@cuda.jit(cache=True)
def _scan_chunks_kernel(values, out, chunk_totals):
    """Exclusive scan of each chunk of ``values`` into ``out``; chunk sums to ``chunk_totals``."""
    c = cuda.grid(1)
    start = c * _SCAN_CHUNK
    if c >= chunk_totals.shape[0]:
        return
    stop = min(start + _SCAN_CHUNK, values.shape[0])
    total = 0
    for k in range(start, stop):
        out[k] = total
        total += values[k]
    chunk_totals[c] = total
    if stop == values.shape[0]:
        out[stop] = total  # complete when there is a single chunk


@cuda.jit(cache=True)
def _add_chunk_offsets_kernel(out, chunk_offsets):
    k = cuda.grid(1)
    n = out.shape[0] - 1
    if k < n:
        out[k] += chunk_offsets[k // _SCAN_CHUNK]
    elif k == n:
        out[n] = chunk_offsets[chunk_offsets.shape[0] - 1]


def _exclusive_scan(values):
    """Device int64 [m] -> device int64 [m + 1]: ``out[k] = sum(values[:k])``."""
    m = values.shape[0]
    out = cuda.device_array(m + 1, np.int64)
    n_chunks = max(1, (m + _SCAN_CHUNK - 1) // _SCAN_CHUNK)
    chunk_totals = cuda.device_array(n_chunks, np.int64)
    _scan_chunks_kernel[_blocks(n_chunks), _THREADS_PER_BLOCK](values, out, chunk_totals)
    if n_chunks > 1:
        _add_chunk_offsets_kernel[_blocks(m + 1), _THREADS_PER_BLOCK](out, _exclusive_scan(chunk_totals))
    return out


_decode_image = cuda.jit(device=True)(decode_image)


@cuda.jit(device=True)
def _visit_receiver(
    i, keys, start, write, positions, cell, pbc, wrap, wrapped, atom_bin, bin_start, bin_atoms,
    n_bins, reach, shift_min, shift_bits, search2, inner2, cutoff2, self_interaction,
):  # fmt: skip
    """Count the edges of receiver ``i``; if ``write``, store their keys from ``keys[start]``.

    Same images, screening, exact test and keys as ``mtsim.kernels.cpu._fill_bin``.
    """
    j_shift = shift_bits[0] + shift_bits[1] + shift_bits[2]
    count = 0
    for c0 in range(atom_bin[i, 0] - reach[0], atom_bin[i, 0] + reach[0] + 1):
        s0 = c0 // n_bins[0]
        if s0 != 0 and not pbc[0]:
            continue
        for c1 in range(atom_bin[i, 1] - reach[1], atom_bin[i, 1] + reach[1] + 1):
            s1 = c1 // n_bins[1]
            if s1 != 0 and not pbc[1]:
                continue
            for c2 in range(atom_bin[i, 2] - reach[2], atom_bin[i, 2] + reach[2] + 1):
                s2 = c2 // n_bins[2]
                if s2 != 0 and not pbc[2]:
                    continue
                image = ((c0 - s0 * n_bins[0]) * n_bins[1] + c1 - s1 * n_bins[1]) * n_bins[2] + c2 - s2 * n_bins[2]
                image_key = (
                    ((s0 - shift_min[0]) << (shift_bits[1] + shift_bits[2]))
                    | ((s1 - shift_min[1]) << shift_bits[2])
                    | (s2 - shift_min[2])
                )  # fmt: skip
                is_home_image = s0 == 0 and s1 == 0 and s2 == 0
                # receiver moved by -s @ cell, so that the searched atoms need no shift
                x = wrapped[i, 0] - (s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0])
                y = wrapped[i, 1] - (s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1])
                z = wrapped[i, 2] - (s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2])
                for t in range(bin_start[image], bin_start[image + 1]):
                    j = bin_atoms[t]
                    dx, dy, dz = wrapped[j, 0] - x, wrapped[j, 1] - y, wrapped[j, 2] - z
                    distance2 = dx * dx + dy * dy + dz * dz
                    if distance2 >= search2 or (j == i and is_home_image and not self_interaction):
                        continue
                    if distance2 < inner2 or _is_edge(
                        positions, i, j, cell,
                        s0 + wrap[i, 0] - wrap[j, 0], s1 + wrap[i, 1] - wrap[j, 1], s2 + wrap[i, 2] - wrap[j, 2],
                        cutoff2,
                    ):  # fmt: skip
                        if write:
                            keys[start + count] = (j << j_shift) | image_key
                        count += 1
    return count


@cuda.jit(cache=True)
def _count_kernel(
    counts, positions, cell, pbc, wrap, wrapped, atom_bin, bin_start, bin_atoms,
    n_bins, reach, shift_min, shift_bits, search2, inner2, cutoff2, self_interaction,
):  # fmt: skip
    i = cuda.grid(1)
    if i < positions.shape[0]:
        counts[i] = _visit_receiver(  # keys (here counts) are not written when counting
            i, counts, 0, False, positions, cell, pbc, wrap, wrapped, atom_bin, bin_start, bin_atoms,
            n_bins, reach, shift_min, shift_bits, search2, inner2, cutoff2, self_interaction,
        )  # fmt: skip


@cuda.jit(device=True)
def _sift_down(keys, start, root, end):
    """Restore the max-heap property of ``keys[start : start + end]`` below ``root``."""
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and keys[start + child] < keys[start + child + 1]:
            child += 1
        if keys[start + root] >= keys[start + child]:
            return
        keys[start + root], keys[start + child] = keys[start + child], keys[start + root]
        root = child


@cuda.jit(device=True)
def _heapsort(keys, start, count):
    """Sort ``keys[start : start + count]`` in place (in one thread, no extra memory)."""
    for root in range(count // 2 - 1, -1, -1):
        _sift_down(keys, start, root, count)
    for end in range(count - 1, 0, -1):
        keys[start], keys[start + end] = keys[start + end], keys[start]
        _sift_down(keys, start, 0, end)


@cuda.jit(cache=True)
def _fill_kernel(
    offsets, edge_i, edge_j, edge_S, positions, cell, pbc, wrap, wrapped, atom_bin, bin_start, bin_atoms,
    n_bins, reach, shift_min, shift_bits, search2, inner2, cutoff2, self_interaction,
):  # fmt: skip
    i = cuda.grid(1)
    if i >= positions.shape[0]:
        return
    start = offsets[i]
    count = offsets[i + 1] - start
    _visit_receiver(
        i, edge_j, start, True, positions, cell, pbc, wrap, wrapped, atom_bin, bin_start, bin_atoms,
        n_bins, reach, shift_min, shift_bits, search2, inner2, cutoff2, self_interaction,
    )  # fmt: skip
    _heapsort(edge_j, start, count)
    j_shift = shift_bits[0] + shift_bits[1] + shift_bits[2]
    for e in range(start, start + count):
        j = edge_j[e] >> j_shift
        s0, s1, s2 = _decode_image(edge_j[e] & ((1 << j_shift) - 1), shift_min, shift_bits)
        edge_i[e] = i
        edge_j[e] = j
        edge_S[e, 0] = s0 + wrap[i, 0] - wrap[j, 0]
        edge_S[e, 1] = s1 + wrap[i, 1] - wrap[j, 1]
        edge_S[e, 2] = s2 + wrap[i, 2] - wrap[j, 2]


def _as_device_array(array):
    """The input as a numba device array if it lives on the GPU, else None."""
    if hasattr(array, "copy_to_host"):  # numba device array (or the simulator's)
        return array
    if hasattr(array, "__cuda_array_interface__"):  # CuPy, PyTorch, ...
        return cuda.as_cuda_array(array)
    return None


def _host_copy(array):
    device_array = _as_device_array(array)
    return array if device_array is None else device_array.copy_to_host()


def _device_positions(positions):
    """Validated float64 [n, 3] device array from numpy or device input."""
    device_array = _as_device_array(positions)
    if device_array is None:
        return cuda.to_device(validate_positions(positions))
    if device_array.ndim != 2 or device_array.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {device_array.shape}")
    if device_array.dtype != np.float64:
        raise ValueError(f"device positions must be float64, got dtype {device_array.dtype}")
    return device_array


def neighbor_list_cuda(positions, cell, pbc, cutoff, self_interaction=True, return_device=False):
    """All pairs closer than ``cutoff``, computed on the GPU.

    Same arguments, results and errors as :func:`mtsim.kernels.neighbor_list`
    (``i``, ``j`` int64 [e], ``S`` int64 [e, 3], sorted by ``(i, j, S)``), with equal
    arrays. ``positions`` may be a numpy array or a float64 device array, ``cell`` and
    ``pbc`` numpy or device arrays. With ``return_device=True`` the three arrays are
    returned as numba device arrays and never copied to the host; otherwise as numpy.
    """
    cell, pbc, cutoff = validate_cell_pbc_cutoff(_host_copy(cell), _host_copy(pbc), cutoff)
    positions = _device_positions(positions)
    n_atoms = positions.shape[0]
    box, to_frac, heights = working_box(cell, pbc)

    d_to_frac = cuda.to_device(to_frac)
    frac_min = cuda.to_device(np.full(3, np.inf))
    frac_max = cuda.to_device(np.full(3, -np.inf))
    not_finite = cuda.to_device(np.zeros(1, np.int32))
    _bounds_kernel[_blocks(n_atoms), _THREADS_PER_BLOCK](positions, d_to_frac, frac_min, frac_max, not_finite)
    if not_finite.copy_to_host()[0]:
        raise ValueError("positions contain NaN or inf")

    if n_atoms == 0:
        edges = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 3), np.int64))
        return tuple(cuda.to_device(e) for e in edges) if return_device else edges

    grid = bin_grid(pbc, box, heights, frac_min.copy_to_host(), frac_max.copy_to_host(), cutoff, n_atoms)
    d_cell, d_pbc, n_bins = cuda.to_device(cell), cuda.to_device(pbc), cuda.to_device(grid.n_bins)
    wrap = cuda.device_array((n_atoms, 3), np.int64)
    wrapped = cuda.device_array((n_atoms, 3), np.float64)
    atom_bin = cuda.device_array((n_atoms, 3), np.int64)
    flat_bin = cuda.device_array(n_atoms, np.int64)
    bin_count = cuda.to_device(np.zeros(int(np.prod(grid.n_bins)), np.int64))
    _bin_kernel[_blocks(n_atoms), _THREADS_PER_BLOCK](
        positions, d_cell, d_to_frac, d_pbc, cuda.to_device(grid.origin), cuda.to_device(grid.bins_per_unit),
        n_bins, wrap, wrapped, atom_bin, flat_bin, bin_count,
    )  # fmt: skip
    bin_start = _exclusive_scan(bin_count)
    cursor = cuda.device_array(bin_count.shape[0], np.int64)
    cursor.copy_to_device(bin_start[: bin_count.shape[0]])
    bin_atoms = cuda.device_array(n_atoms, np.int64)
    _place_kernel[_blocks(n_atoms), _THREADS_PER_BLOCK](flat_bin, cursor, bin_atoms)

    arguments = (
        positions, d_cell, d_pbc, wrap, wrapped, atom_bin, bin_start, bin_atoms,
        n_bins, cuda.to_device(grid.reach), cuda.to_device(grid.shift_min), cuda.to_device(grid.shift_bits),
        grid.search_radius**2, grid.inner_radius**2, cutoff * cutoff, bool(self_interaction),
    )  # fmt: skip
    counts = cuda.device_array(n_atoms, np.int64)
    _count_kernel[_blocks(n_atoms), _THREADS_PER_BLOCK](counts, *arguments)
    offsets = _exclusive_scan(counts)
    n_edges = int(offsets[n_atoms : n_atoms + 1].copy_to_host()[0])

    edge_i = cuda.device_array(n_edges, np.int64)
    edge_j = cuda.device_array(n_edges, np.int64)
    edge_S = cuda.device_array((n_edges, 3), np.int64)
    _fill_kernel[_blocks(n_atoms), _THREADS_PER_BLOCK](offsets, edge_i, edge_j, edge_S, *arguments)
    if return_device:
        return edge_i, edge_j, edge_S
    return edge_i.copy_to_host(), edge_j.copy_to_host(), edge_S.copy_to_host()
