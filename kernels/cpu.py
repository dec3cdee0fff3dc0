"""CPU cell-list neighbour list (Numba, O(n), multithreaded).

Algorithm
---------
1. Fractional coordinates in the working box (:mod:`mtsim.kernels._geometry`); along
   periodic directions atoms are wrapped into [0, 1) and the integer wrapping shift
   ``wrap`` is kept, so shifts returned refer to the original, unwrapped positions.
2. Atoms are counting-sorted into bins of size >= cutoff (``_bin_atoms``).
3. Two passes over the bins (parallel), each pairing the receivers of a bin with
   the atoms of the neighbouring bins and their periodic images (``_visit_bin``):
   count every receiver's edges, then, after a prefix sum, write one int64 sort key
   per edge into the receiver's segment of the output. Each segment is then sorted
   and decoded into ``(i, j, S)``. Keys are unique per receiver and ordered like
   ``(j, S)``, so the output order does not depend on the number of threads.

Edge test
---------
An edge ``(i, j, S)`` is kept iff ``|positions[j] - positions[i] + S @ cell|^2 <
cutoff^2``, evaluated from the original positions with explicit fused multiply-adds
in a fixed order (:func:`_is_edge`). Distances from wrapped positions decide alone
where they are farther from the cutoff than any rounding error (see
:class:`~mtsim.kernels._geometry.BinGrid`), i.e. for all but measure-zero cases. The
result is thus a function of the inputs only, not of wrapping or binning rounding,
and the CUDA kernel (:mod:`mtsim.kernels.cuda`), which uses the same exact test,
reproduces it bit for bit.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from mtsim.kernels._geometry import (
    bin_grid,
    decode_image,
    validate_cell_pbc_cutoff,
    validate_positions,
    working_box,
)

#: Fewer threads are used for small structures, at least this many atoms per
#: thread: starting and synchronising threads would cost more than they save.
MIN_ATOMS_PER_THREAD = 2048


@contextlib.contextmanager
def _threads_for(n_atoms: int):
    """Limit numba's (thread-local) number of threads for a structure of ``n_atoms``."""
    threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, n_atoms // MIN_ATOMS_PER_THREAD)))
    try:
        yield
    finally:
        numba.set_num_threads(threads)


@intrinsic
def _fma(typingctx, x, y, z):
    """``x * y + z`` rounded once (IEEE fused multiply-add, same as ``cuda.fma``)."""
    signature = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return signature, codegen


@njit(cache=True)
def _is_edge(positions, i, j, cell, S0, S1, S2, cutoff2):
    """Whether ``|positions[j] - positions[i] + S @ cell| < cutoff``."""
    a, b, c = float(S0), float(S1), float(S2)
    dx = (positions[j, 0] - positions[i, 0]) + _fma(a, cell[0, 0], _fma(b, cell[1, 0], c * cell[2, 0]))
    dy = (positions[j, 1] - positions[i, 1]) + _fma(a, cell[0, 1], _fma(b, cell[1, 1], c * cell[2, 1]))
    dz = (positions[j, 2] - positions[i, 2]) + _fma(a, cell[0, 2], _fma(b, cell[1, 2], c * cell[2, 2]))
    return _fma(dx, dx, _fma(dy, dy, dz * dz)) < cutoff2


@njit(cache=True)
def _bin_atoms(positions, cell, frac, pbc, origin, bins_per_unit, n_bins):
    """Wrap the atoms and sort them into bins.

    Returns ``wrap`` [n,3] (lattice vectors subtracted along periodic directions)
    and the bins in CSR form: the atoms of flat bin ``b`` are ``bin_atoms[t]`` for
    ``t`` in ``bin_start[b]:bin_start[b + 1]``. ``bin_wrapped``, ``bin_positions`` and
    ``bin_wrap`` hold their wrapped and original positions and ``wrap`` in this bin
    order, for contiguous memory access.
    """
    n_atoms = frac.shape[0]
    wrap = np.zeros((n_atoms, 3), np.int64)
    wrapped = np.empty((n_atoms, 3), np.float64)
    flat_bin = np.empty(n_atoms, np.int64)
    for a in range(n_atoms):
        flat_bin[a] = 0
        for k in range(3):
            f = frac[a, k]
            if pbc[k]:
                w = np.floor(f)
                wrap[a, k] = np.int64(w)
                f -= w
            b = np.int64(np.floor((f - origin[k]) * bins_per_unit[k]))
            flat_bin[a] = flat_bin[a] * n_bins[k] + min(max(b, 0), n_bins[k] - 1)
        for x in range(3):
            lattice_shift = wrap[a, 0] * cell[0, x] + wrap[a, 1] * cell[1, x] + wrap[a, 2] * cell[2, x]
            wrapped[a, x] = positions[a, x] - lattice_shift

    bin_start = np.zeros(n_bins[0] * n_bins[1] * n_bins[2] + 1, np.int64)
    for a in range(n_atoms):
        bin_start[flat_bin[a] + 1] += 1
    bin_start = np.cumsum(bin_start)
    cursor = bin_start[:-1].copy()
    bin_atoms = np.empty(n_atoms, np.int64)
    for a in range(n_atoms):
        bin_atoms[cursor[flat_bin[a]]] = a
        cursor[flat_bin[a]] += 1
    return wrap, bin_start, bin_atoms, wrapped[bin_atoms], positions[bin_atoms], wrap[bin_atoms]


@njit(cache=True)
def _searched_images(b, cell, pbc, n_bins, reach, shift_min, shift_bits):
    """Bins searched for the receivers of flat bin ``b``.

    Bin ``c`` (3-d, out of range along periodic directions) is bin ``c mod n_bins``
    of the image shifted by ``s = c // n_bins`` lattice vectors. Returns ``bins``
    (flat indices), ``shifts`` [m, 3] (``s @ cell``, Å), ``image_keys`` (the low bits
    of the sort keys) and ``home`` (``s == 0``).
    """
    size = (2 * reach[0] + 1) * (2 * reach[1] + 1) * (2 * reach[2] + 1)
    bins = np.empty(size, np.int64)
    shifts = np.empty((size, 3), np.float64)
    image_keys = np.empty(size, np.int64)
    home = np.empty(size, np.bool_)
    b0, b1, b2 = b // (n_bins[1] * n_bins[2]), (b // n_bins[2]) % n_bins[1], b % n_bins[2]
    m = 0
    for c0 in range(b0 - reach[0], b0 + reach[0] + 1):
        s0 = c0 // n_bins[0]
        if s0 != 0 and not pbc[0]:
            continue
        for c1 in range(b1 - reach[1], b1 + reach[1] + 1):
            s1 = c1 // n_bins[1]
            if s1 != 0 and not pbc[1]:
                continue
            for c2 in range(b2 - reach[2], b2 + reach[2] + 1):
                s2 = c2 // n_bins[2]
                if s2 != 0 and not pbc[2]:
                    continue
                bins[m] = ((c0 - s0 * n_bins[0]) * n_bins[1] + c1 - s1 * n_bins[1]) * n_bins[2] + c2 - s2 * n_bins[2]
                for x in range(3):
                    shifts[m, x] = s0 * cell[0, x] + s1 * cell[1, x] + s2 * cell[2, x]
                image_keys[m] = (
                    ((s0 - shift_min[0]) << (shift_bits[1] + shift_bits[2]))
                    | ((s1 - shift_min[1]) << shift_bits[2])
                    | (s2 - shift_min[2])
                )  # fmt: skip
                home[m] = s0 == 0 and s1 == 0 and s2 == 0
                m += 1
    return bins[:m], shifts[:m], image_keys[:m], home[:m]


_decode_image = njit(cache=True)(decode_image)


@njit(cache=True)
def _is_close_call_edge(bin_positions, bin_wrap, r, t, cell, image_key, shift_min, shift_bits, cutoff2):
    """Exact test for a candidate within rounding margin of the cutoff."""
    s0, s1, s2 = _decode_image(image_key, shift_min, shift_bits)
    S0 = s0 + bin_wrap[r, 0] - bin_wrap[t, 0]
    S1 = s1 + bin_wrap[r, 1] - bin_wrap[t, 1]
    S2 = s2 + bin_wrap[r, 2] - bin_wrap[t, 2]
    return _is_edge(bin_positions, r, t, cell, S0, S1, S2, cutoff2)


@njit(cache=True)
def _count_bin(
    b, counts, cell, pbc, bin_start, bin_atoms, bin_wrapped, bin_positions, bin_wrap,
    n_bins, reach, shift_min, shift_bits, search2, inner2, cutoff2, self_interaction,
):  # fmt: skip
    """Add the number of edges of each receiver ``r`` in flat bin ``b`` to ``counts[r]``."""
    images, shifts, image_keys, home = _searched_images(b, cell, pbc, n_bins, reach, shift_min, shift_bits)
    for m in range(images.shape[0]):
        first, stop = bin_start[images[m]], bin_start[images[m] + 1]
        for r in range(bin_start[b], bin_start[b + 1]):
            # receiver moved by -s @ cell, so that the searched atoms need no shift
            x = bin_wrapped[r, 0] - shifts[m, 0]
            y = bin_wrapped[r, 1] - shifts[m, 1]
            z = bin_wrapped[r, 2] - shifts[m, 2]
            n_inner = 0
            n_screened = 0
            for t in range(first, stop):  # branch-free, vectorised
                dx, dy, dz = bin_wrapped[t, 0] - x, bin_wrapped[t, 1] - y, bin_wrapped[t, 2] - z
                distance2 = dx * dx + dy * dy + dz * dz
                n_inner += distance2 < inner2
                n_screened += distance2 < search2
            if n_screened > n_inner:  # rare: pairs within rounding of the cutoff
                for t in range(first, stop):
                    dx, dy, dz = bin_wrapped[t, 0] - x, bin_wrapped[t, 1] - y, bin_wrapped[t, 2] - z
                    distance2 = dx * dx + dy * dy + dz * dz
                    if inner2 <= distance2 < search2:
                        n_inner += _is_close_call_edge(
                            bin_positions, bin_wrap, r, t, cell, image_keys[m], shift_min, shift_bits, cutoff2
                        )
            if home[m] and images[m] == b and not self_interaction:
                n_inner -= 1  # the self edge (r, r, 0), at distance 0
            counts[r] += n_inner


@njit(cache=True)
def _sort_segment(keys, start, stop):
    """Sort ``keys[start:stop]``: insertion sort for the usual short segments."""
    if stop - start > 64:
        keys[start:stop].sort()
        return
    for e in range(start + 1, stop):
        key = keys[e]
        f = e - 1
        while f >= start and keys[f] > key:
            keys[f + 1] = keys[f]
            f -= 1
        keys[f + 1] = key


@njit(cache=True)
def _fill_bin(
    b, offsets, edge_i, edge_j, edge_S, cell, pbc, wrap, bin_start, bin_atoms, bin_wrapped, bin_positions, bin_wrap,
    n_bins, reach, shift_min, shift_bits, search2, inner2, cutoff2, self_interaction,
):  # fmt: skip
    """Write the edges of the receivers in flat bin ``b`` (same as counted by ``_count_bin``).

    Receiver ``i`` owns the output segment ``offsets[i]:offsets[i + 1]``: its sort keys
    are written to ``edge_j`` there, sorted, and decoded into ``(i, j, S)`` in place.
    """
    j_shift = shift_bits[0] + shift_bits[1] + shift_bits[2]
    found = offsets[bin_atoms[bin_start[b] : bin_start[b + 1]]]
    images, shifts, image_keys, home = _searched_images(b, cell, pbc, n_bins, reach, shift_min, shift_bits)
    for m in range(images.shape[0]):
        first, stop = bin_start[images[m]], bin_start[images[m] + 1]
        for r in range(bin_start[b], bin_start[b + 1]):
            x = bin_wrapped[r, 0] - shifts[m, 0]
            y = bin_wrapped[r, 1] - shifts[m, 1]
            z = bin_wrapped[r, 2] - shifts[m, 2]
            n_found = found[r - bin_start[b]]
            for t in range(first, stop):
                dx, dy, dz = bin_wrapped[t, 0] - x, bin_wrapped[t, 1] - y, bin_wrapped[t, 2] - z
                distance2 = dx * dx + dy * dy + dz * dz
                if distance2 >= search2 or (t == r and home[m] and not self_interaction):
                    continue
                if distance2 < inner2 or _is_close_call_edge(
                    bin_positions, bin_wrap, r, t, cell, image_keys[m], shift_min, shift_bits, cutoff2
                ):
                    edge_j[n_found] = (bin_atoms[t] << j_shift) | image_keys[m]
                    n_found += 1
            found[r - bin_start[b]] = n_found

    for r in range(bin_start[b], bin_start[b + 1]):
        i = bin_atoms[r]
        start, stop = offsets[i], offsets[i + 1]
        _sort_segment(edge_j, start, stop)
        for e in range(start, stop):
            j = edge_j[e] >> j_shift
            s0, s1, s2 = _decode_image(edge_j[e] & ((1 << j_shift) - 1), shift_min, shift_bits)
            edge_i[e] = i
            edge_j[e] = j
            edge_S[e, 0] = s0 + wrap[i, 0] - wrap[j, 0]
            edge_S[e, 1] = s1 + wrap[i, 1] - wrap[j, 1]
            edge_S[e, 2] = s2 + wrap[i, 2] - wrap[j, 2]


@njit(cache=True, parallel=True)
def _count_edges(cell, pbc, bins, search):
    """Number of edges of each receiver (atom order)."""
    bin_start, bin_atoms = bins[1], bins[2]
    n_atoms = bin_atoms.shape[0]
    found = np.zeros(n_atoms, np.int64)
    for b in prange(bin_start.shape[0] - 1):
        _count_bin(b, found, cell, pbc, *bins[1:], *search)
    counts = np.empty(n_atoms, np.int64)
    for r in range(n_atoms):
        counts[bin_atoms[r]] = found[r]
    return counts


@njit(cache=True, parallel=True)
def _fill_edges(cell, pbc, bins, search, offsets, edge_i, edge_j, edge_S):
    """Fill each receiver's segment ``offsets[i]:offsets[i + 1]`` of the output."""
    for b in prange(bins[1].shape[0] - 1):
        _fill_bin(b, offsets, edge_i, edge_j, edge_S, cell, pbc, *bins, *search)


def _empty_edges():
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, 3), np.int64)


def neighbor_list(positions, cell, pbc, cutoff, self_interaction=True):
    """All pairs closer than ``cutoff``, in ASE's ``'ijS'`` form.

    Parameters
    ----------
    positions : array [n, 3], float64 (Å)
        Cartesian positions; need not be wrapped into the cell.
    cell : array [3, 3] (Å)
        Lattice vectors as rows (ASE convention). Rows along non-periodic directions
        are ignored (a zero cell is fine for a molecule).
    pbc : bool or 3 bools
        Periodicity along each lattice vector.
    cutoff : float (Å), > 0
    self_interaction : bool
        Include one self edge ``(i, i, S=0)`` per atom. Periodic images of an atom
        itself (``S != 0``) within the cutoff are ordinary edges, always included.

    Returns
    -------
    i, j : int64 [e]
    S : int64 [e, 3]
        Integer cell shifts: ``r_ij = positions[j] - positions[i] + S @ cell`` and
        ``|r_ij| < cutoff``. Both directions of every pair; ``S`` is 0 along
        non-periodic directions. Sorted lexicographically by ``(i, j, S0, S1, S2)``.

    Raises
    ------
    ValueError
        For wrong shapes or dtypes, NaN/inf, ``cutoff <= 0``, or a singular cell along
        the periodic directions.

    Notes
    -----
    Runs on numba's threads (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``), one
    per :data:`MIN_ATOMS_PER_THREAD` atoms at most. The first call compiles the
    kernels (cached on disk afterwards).
    """
    cell, pbc, cutoff = validate_cell_pbc_cutoff(cell, pbc, cutoff)
    positions = validate_positions(positions)
    n_atoms = len(positions)
    if n_atoms == 0:
        return _empty_edges()
    box, to_frac, heights = working_box(cell, pbc)
    frac = positions @ to_frac
    grid = bin_grid(pbc, box, heights, frac.min(axis=0), frac.max(axis=0), cutoff, n_atoms)
    bins = _bin_atoms(positions, cell, frac, pbc, grid.origin, grid.bins_per_unit, grid.n_bins)
    search = (
        grid.n_bins, grid.reach, grid.shift_min, grid.shift_bits,
        grid.search_radius**2, grid.inner_radius**2, cutoff * cutoff, bool(self_interaction),
    )  # fmt: skip
    with _threads_for(n_atoms):
        offsets = np.zeros(n_atoms + 1, np.int64)
        np.cumsum(_count_edges(cell, pbc, bins, search), out=offsets[1:])
        # outputs allocated by numpy (huge pages for large arrays: far fewer page faults)
        n_edges = int(offsets[-1])
        edges = np.empty(n_edges, np.int64), np.empty(n_edges, np.int64), np.empty((n_edges, 3), np.int64)
        _fill_edges(cell, pbc, bins, search, offsets, *edges)
    return edges


def batched_neighbor_list(positions, cells, pbcs, n_atoms, cutoff, self_interaction=True):
    """:func:`neighbor_list` for several structures stored back to back.

    Parameters
    ----------
    positions : array [N, 3] (Å), the structures' atoms concatenated.
    cells : array [b, 3, 3] (Å).
    pbcs : bool array [b, 3].
    n_atoms : int array [b], atoms per structure (sums to N).
    cutoff : float (Å), self_interaction : bool, as in :func:`neighbor_list`.

    Returns
    -------
    i, j, S as in :func:`neighbor_list`, with global atom indices (offset by each
    structure's first atom), ordered by structure, then by ``(i, j, S)``.
    """
    positions = validate_positions(positions)
    cells = np.asarray(cells)
    n_atoms = np.asarray(n_atoms)
    if n_atoms.ndim != 1 or n_atoms.dtype.kind not in "iu" or np.any(n_atoms < 0):
        raise ValueError(f"n_atoms must be a 1-d array of non-negative integers, got {n_atoms!r}")
    n_structures = len(n_atoms)
    if cells.shape != (n_structures, 3, 3):
        raise ValueError(f"cells must have shape ({n_structures}, 3, 3), got {cells.shape}")
    pbcs = np.asarray(pbcs)
    if pbcs.shape != (n_structures, 3):
        raise ValueError(f"pbcs must have shape ({n_structures}, 3), got {pbcs.shape}")
    if n_atoms.sum() != len(positions):
        raise ValueError(f"n_atoms sums to {n_atoms.sum()} but positions has {len(positions)} rows")

    first_atom = np.concatenate([[0], np.cumsum(n_atoms)])
    parts = [_empty_edges()]
    for k in range(n_structures):
        i, j, S = neighbor_list(
            positions[first_atom[k] : first_atom[k + 1]], cells[k], pbcs[k], cutoff, self_interaction
        )
        parts.append((i + first_atom[k], j + first_atom[k], S))
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))
