"""Reusable neighbour list with a Verlet skin, for molecular dynamics.

The list holds every pair within ``cutoff + skin`` at the last build. As long as no
atom has moved more than ``skin / 2`` since then (and the cell, pbc and number of
atoms are unchanged), every pair now within ``cutoff`` is still in the list, with the
same shift ``S``. Callers whose every term vanishes beyond ``cutoff`` (e.g. a model
with a smooth cutoff) therefore get exact results from the skin list without
filtering; others must drop the pairs with ``|r_ij| >= cutoff`` themselves.
"""

from __future__ import annotations

import numpy as np

from mtsim.kernels._geometry import validate_cell_pbc_cutoff, validate_cutoff, validate_positions
from mtsim.kernels.cpu import neighbor_list


class NeighborList:
    """Neighbour list rebuilt only when needed.

    Parameters
    ----------
    cutoff : float (Å), > 0
    skin : float (Å), >= 0
        Extra distance kept in the list; with a fixed cell the list is rebuilt when an
        atom has moved more than ``skin / 2`` since the last build (unwrapped positions
        may leave the cell). A changed cell (NPT) is allowed for as long as no pair outside
        the list can have come within ``cutoff``. ``skin=0`` rebuilds on any change.
    self_interaction : bool
        As in :func:`mtsim.kernels.neighbor_list`.

    Attributes
    ----------
    i, j, S : arrays from the last build (see :func:`mtsim.kernels.neighbor_list`),
        all pairs within ``cutoff + skin`` of the positions at that build.
    n_builds : int, number of builds so far.
    """

    def __init__(self, cutoff: float, skin: float = 0.0, self_interaction: bool = True):
        self.cutoff = validate_cutoff(cutoff)
        skin = float(skin)
        if not (np.isfinite(skin) and skin >= 0.0):
            raise ValueError(f"skin must be a finite number >= 0 (Å), got {skin}")
        self.skin = skin
        self.self_interaction = bool(self_interaction)
        self.i = self.j = self.S = None
        self.n_builds = 0
        self._reference = None  # (positions, cell, pbc) of the last build

    def _needs_rebuild(self, positions, cell, pbc) -> bool:
        """True when a pair outside the list could have come within ``cutoff``.

        With M = cell_build^-1 @ cell and d the largest displacement since the build measured in the build cell
        (the affine part of a cell change removed), every pair outside the list is still at least
        ``sigma_min(M) * (cutoff + skin - 2 d)`` apart; for a fixed cell this is the usual ``2 d > skin`` rule.
        """
        if self._reference is None:
            return True
        old_positions, old_cell, old_pbc = self._reference
        if positions.shape != old_positions.shape or not np.array_equal(pbc, old_pbc):
            return True
        if np.array_equal(cell, old_cell):
            moved, shrink = positions - old_positions, 1.0
        else:
            if not old_pbc.any():
                return True
            try:
                strain = np.linalg.solve(old_cell, cell)
            except np.linalg.LinAlgError:
                return True
            moved = positions @ np.linalg.inv(strain) - old_positions
            shrink = np.linalg.svd(strain, compute_uv=False).min()
        d = np.sqrt(np.max(np.sum(moved**2, axis=1), initial=0.0))
        return bool(shrink * (self.cutoff + self.skin - 2.0 * d) < self.cutoff)

    def remove(self, keep) -> None:
        """Drop atoms (``keep``: bool mask over the current atoms) and renumber the pairs, without a rebuild."""
        if self._reference is None:
            return
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        kept = keep[self.i] & keep[self.j]
        self.i, self.j, self.S = new_index[self.i[kept]], new_index[self.j[kept]], self.S[kept]
        positions, cell, pbc = self._reference
        self._reference = (positions[keep], cell, pbc)

    def update(self, positions, cell, pbc) -> bool:
        """Rebuild the list if needed for these positions (Å), cell (Å) and pbc.

        Returns True if the list was rebuilt.
        """
        cell, pbc, _ = validate_cell_pbc_cutoff(cell, pbc, self.cutoff)
        positions = validate_positions(positions)
        if not self._needs_rebuild(positions, cell, pbc):
            return False
        self.i, self.j, self.S = neighbor_list(
            positions, cell, pbc, self.cutoff + self.skin, self_interaction=self.self_interaction
        )
        self._reference = (positions.copy(), cell.copy(), pbc.copy())
        self.n_builds += 1
        return True

    def get(self):
        """``(i, j, S)`` of the last build; raises RuntimeError before the first update."""
        if self._reference is None:
            raise RuntimeError("NeighborList.get() called before update()")
        return self.i, self.j, self.S
