"""Input validation and cell-list geometry shared by the CPU and CUDA kernels.

Everything here is host-side numpy on O(1)-sized data (the cell, the pbc flags and
a few per-direction numbers); the per-atom work lives in the kernels.

The working box
---------------
Atoms are binned in fractional coordinates ``frac = positions @ to_frac`` of a
*working box* whose rows are the periodic lattice vectors of ``cell`` completed by
unit vectors orthogonal to them along the non-periodic directions (the given cell
rows there are ignored, so a zero cell works for molecules). Along a non-periodic
direction ``frac`` is therefore a plain Cartesian coordinate in Å.

Along a periodic direction ``k`` the height of the cell (distance between lattice
planes, ``volume / |a_l x a_m|``) is ``1 / |to_frac[:, k]|``; a displacement ``r``
changes ``frac[k]`` by at most ``|r| / height_k``. Bin sizes and the number of
periodic images searched follow from these heights, never from vector lengths, so
skewed cells and cells smaller than the cutoff are handled exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

#: Periodic lattice vectors are linearly dependent when their volume (area) is below
#: this fraction of the product of their lengths.
SINGULAR_TOLERANCE = 1e-9

#: Margin, relative to the system's length scale, added to the cutoff when sizing bins
#: and screening candidates with wrapped positions; it dwarfs their rounding errors,
#: so results equal those of the exact ``|r_ij| < cutoff`` test (see :class:`BinGrid`).
SEARCH_MARGIN = 1e-8

#: Upper bound on the number of bins, per atom; sparse systems get coarser bins.
MAX_BINS_PER_ATOM = 2

#: At most this many periodic images of the cell may lie within the cutoff (the product over periodic directions of
#: ``2 ceil(cutoff / height) + 1``); a smaller cell is refused (a 0.005 Å cell with a 5 Å cutoff has 8e9).
MAX_IMAGES = 1_000_000

#: Atoms may lie at most this many cells away from the cell along a periodic direction (further out, float64
#: positions lose the precision of the distances), and at most this many Å along a non-periodic one.
MAX_CELLS_AWAY = 1e6
MAX_COORDINATE = 1e8

#: Sort keys (see :class:`BinGrid`) are non-negative int64.
_KEY_BITS = 62


def _as_float64(array, name: str) -> np.ndarray:
    """Convert to float64 if that is lossless, else raise (never down-cast)."""
    array = np.asarray(array)
    if array.dtype.kind in "iub":
        return array.astype(np.float64)
    if array.dtype.kind != "f" or array.dtype.itemsize > 8:
        raise ValueError(f"{name} must be a real float array (float64), got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def validate_cell_pbc_cutoff(cell, pbc, cutoff) -> tuple[np.ndarray, np.ndarray, float]:
    """Check ``cell`` [3,3] Å, ``pbc`` (bool or 3 bools) and ``cutoff`` > 0 Å."""
    cell = _as_float64(cell, "cell")
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    if not np.all(np.isfinite(cell)):
        raise ValueError("cell contains NaN or inf")

    pbc = np.asarray(pbc)
    if pbc.dtype != np.bool_:
        if pbc.dtype.kind not in "iu" or not np.all((pbc == 0) | (pbc == 1)):
            raise ValueError(f"pbc must be a bool or 3 bools, got {pbc!r}")
        pbc = pbc.astype(np.bool_)
    if pbc.shape == ():
        pbc = np.full(3, bool(pbc))
    if pbc.shape != (3,):
        raise ValueError(f"pbc must be a bool or 3 bools, got shape {pbc.shape}")

    return np.ascontiguousarray(cell), pbc, validate_cutoff(cutoff)


def validate_cutoff(cutoff) -> float:
    """Check that ``cutoff`` is a positive finite number (Å)."""
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number, got {cutoff!r}") from None
    if not (np.isfinite(cutoff) and cutoff > 0.0):
        raise ValueError(f"cutoff must be a positive finite number (Å), got {cutoff}")
    return cutoff


def validate_positions(positions) -> np.ndarray:
    """Check ``positions`` [n,3] Å, finite; return C-contiguous float64."""
    positions = _as_float64(positions, "positions")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf")
    return np.ascontiguousarray(positions)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def working_box(cell: np.ndarray, pbc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(box [3,3], to_frac [3,3], heights [3])`` of the working box (see module doc).

    Raises ``ValueError`` if the periodic lattice vectors are zero or linearly
    dependent. ``heights`` along non-periodic directions are 1 (unused).
    """
    periodic = np.flatnonzero(pbc)
    vectors = cell[periodic]
    lengths = np.linalg.norm(vectors, axis=1)
    if np.any(lengths == 0.0):
        raise ValueError(f"singular cell: periodic lattice vector(s) {periodic[lengths == 0.0].tolist()} are zero")
    if len(periodic) >= 2:
        if len(periodic) == 3:
            volume = abs(np.linalg.det(vectors))
        else:
            volume = np.linalg.norm(np.cross(vectors[0], vectors[1]))
        if volume <= SINGULAR_TOLERANCE * np.prod(lengths):
            raise ValueError(
                f"singular cell: periodic lattice vectors {periodic.tolist()} are linearly dependent "
                f"(|det| = {volume:.3g})"
            )

    box = np.eye(3)
    box[periodic] = vectors
    free = np.flatnonzero(~pbc)
    if len(periodic) == 2:
        box[free[0]] = _unit(np.cross(vectors[0], vectors[1]))
    elif len(periodic) == 1:
        axis = _unit(vectors[0])
        first = _unit(np.cross(axis, np.eye(3)[np.argmin(np.abs(axis))]))
        box[free[0]] = first
        box[free[1]] = np.cross(axis, first)

    to_frac = np.linalg.inv(box)
    heights = np.where(pbc, 1.0 / np.linalg.norm(to_frac, axis=0), 1.0)
    return box, to_frac, heights


class BinGrid(NamedTuple):
    """Bins of the cell list, per direction k (arrays have shape [3]).

    An atom with (wrapped) fractional coordinate ``f`` goes to bin
    ``clip(floor((f - origin) * bins_per_unit), 0, n_bins - 1)``. A receiver in bin
    ``b`` searches bins ``b - reach .. b + reach``; along periodic directions an
    out-of-range bin ``c`` is bin ``c mod n_bins`` of the image shifted by
    ``s = c // n_bins`` lattice vectors, with ``0 <= s - shift_min < 2**shift_bits``.
    A receiver's edges are sorted by the key obtained by concatenating the bits of
    ``j``, ``s0 - m0``, ``s1 - m1``, ``s2 - m2`` (``m = shift_min``); it is unique per
    receiver and orders edges like ``(j, S)``, since ``S = s + wrap[i] - wrap[j]``.

    Candidates are screened with their distance computed from wrapped positions,
    which differs from the exact one by rounding only, far less than the margin
    ``search_radius - cutoff = cutoff - inner_radius``: below ``inner_radius`` a pair
    is an edge, at or beyond ``search_radius`` it is not, and in between (almost
    never) the exact test decides.
    """

    origin: np.ndarray  # float64
    bins_per_unit: np.ndarray  # float64
    n_bins: np.ndarray  # int64
    reach: np.ndarray  # int64
    shift_min: np.ndarray  # int64
    shift_bits: np.ndarray  # int64
    search_radius: float
    inner_radius: float


def bin_grid(pbc, box, heights, frac_min, frac_max, cutoff: float, n_atoms: int) -> BinGrid:
    """Choose bins of size >= cutoff for a structure.

    ``frac_min``/``frac_max`` [3] bound the atoms' unwrapped fractional coordinates
    (they size the bins along non-periodic directions and the rounding margin).
    """
    frac_min = np.asarray(frac_min, np.float64)
    frac_max = np.asarray(frac_max, np.float64)
    check_extent(pbc, heights, frac_min, frac_max, cutoff)
    length_scale = cutoff + np.sum((np.maximum(np.abs(frac_min), np.abs(frac_max)) + 1.0) * np.linalg.norm(box, axis=1))
    search_radius = cutoff + SEARCH_MARGIN * length_scale

    extent = np.where(pbc, heights, frac_max - frac_min)
    max_bins = max(1, MAX_BINS_PER_ATOM * n_atoms)
    n_bins = np.clip(np.floor(extent / search_radius), 1, max_bins).astype(np.int64)
    while math.prod(n_bins.tolist()) > max_bins:
        largest = np.argmax(n_bins)
        n_bins[largest] = (n_bins[largest] + 1) // 2

    origin = np.where(pbc, 0.0, frac_min)
    safe_extent = np.where(extent > 0.0, extent, 1.0)
    bins_per_unit = np.where(pbc, n_bins, np.where(extent > 0.0, n_bins / safe_extent, 0.0))
    reach = np.where(pbc, np.ceil(search_radius * n_bins / heights), np.minimum(1, n_bins - 1)).astype(np.int64)
    shift_min = np.where(pbc, (-reach) // n_bins, 0).astype(np.int64)
    shift_max = np.where(pbc, (n_bins - 1 + reach) // n_bins, 0)
    shift_bits = np.array([int(n - 1).bit_length() for n in shift_max - shift_min + 1], np.int64)

    if int(n_atoms).bit_length() + shift_bits.sum() > _KEY_BITS:
        raise ValueError(
            f"cutoff {cutoff} Å is too large for this cell: too many periodic images "
            f"({(shift_max - shift_min + 1).tolist()} per direction)"
        )
    return BinGrid(
        origin.astype(np.float64), bins_per_unit.astype(np.float64), n_bins, reach, shift_min, shift_bits,
        float(search_radius), max(0.0, 2.0 * cutoff - search_radius),
    )  # fmt: skip


def check_extent(pbc, heights, frac_min, frac_max, cutoff: float) -> None:
    """Raise ``ValueError`` if the cell is so thin that more than :data:`MAX_IMAGES` periodic images lie within the
    cutoff, or an atom lies more than :data:`MAX_CELLS_AWAY` cells (periodic directions) or :data:`MAX_COORDINATE`
    Å (non-periodic ones) away."""
    images_per_direction = np.where(pbc, 2 * np.ceil(cutoff / heights) + 1, 1)
    if np.prod(images_per_direction) > MAX_IMAGES:
        raise ValueError(
            f"cell too small for the cutoff {cutoff:g} Å: its heights {np.round(heights, 6).tolist()} Å "
            f"put {np.prod(images_per_direction):.3g} periodic images within the cutoff (at most "
            f"{MAX_IMAGES:g}); check the cell's units and size"
        )
    far = np.maximum(np.abs(frac_min), np.abs(frac_max))
    bound = np.where(pbc, MAX_CELLS_AWAY, MAX_COORDINATE)
    if np.any(far > bound):
        k = int(np.argmax(far / bound))
        where = (
            f"{far[k]:.3g} cells away from the cell along lattice vector {k} (at most {MAX_CELLS_AWAY:g})"
            if pbc[k]
            else f"{far[k]:.3g} Å from the origin along non-periodic direction {k} (at most {MAX_COORDINATE:g} Å)"
        )
        advice = "wrap the positions into the cell" if pbc[k] else "check the positions"
        raise ValueError(f"an atom lies {where}; {advice}")


def decode_image(image_key, shift_min, shift_bits):
    """Inverse of the image part of the sort key (compiled by both kernels): the image shift ``(s0, s1, s2)``."""
    s2 = (image_key & ((1 << shift_bits[2]) - 1)) + shift_min[2]
    image_key >>= shift_bits[2]
    s1 = (image_key & ((1 << shift_bits[1]) - 1)) + shift_min[1]
    s0 = (image_key >> shift_bits[1]) + shift_min[0]
    return s0, s1, s2
