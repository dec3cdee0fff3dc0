"""Band structures along ASE's standard Brillouin-zone path (phonopy-style segments).

q points are reduced coordinates of the unit cell's reciprocal lattice; distances are Cartesian without 2 pi (1/Å),
continuous across path breaks, as in phonopy's band.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.cell import Cell
from ase.dft.kpoints import parse_path_string

from mtsim.structure import Structure


@dataclass(frozen=True)
class BandStructure:
    """``segments``: list of q arrays [n_k,3] (end points included in each); ``labels``: (start, end) per segment;
    ``distances`` and ``frequencies`` (THz, [n_k, 3n]) per segment."""

    segments: list[np.ndarray]
    labels: list[tuple[str, str]]
    distances: list[np.ndarray]
    frequencies: list[np.ndarray]

    @property
    def qpoints(self) -> np.ndarray:
        return np.concatenate(self.segments)


def band_path(
    unitcell: Structure, npoints: int = 51, path: str | None = None
) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """Segments of ``npoints`` q points each along ASE's standard path for the cell's Bravais lattice (or ``path``,
    e.g. ``"GXWKGLUWLK,UX"``, with ASE's special points); returns (segments, labels)."""
    bandpath = Cell(unitcell.cell).bandpath(path=path, npoints=0)
    special = bandpath.special_points
    segments, labels = [], []
    for piece in parse_path_string(bandpath.path):
        for start, end in zip(piece[:-1], piece[1:]):
            t = np.linspace(0, 1, npoints)[:, None]
            segments.append(special[start] + t * (special[end] - special[start]))
            labels.append((start, end))
    return segments, labels


def segment_distances(unitcell: Structure, segments: list[np.ndarray]) -> list[np.ndarray]:
    """Cumulative path length (1/Å, no 2 pi) of each segment, continuing from the previous one."""
    reciprocal = np.linalg.inv(unitcell.cell)
    out, offset = [], 0.0
    for q in segments:
        step = np.linalg.norm(np.diff(q, axis=0) @ reciprocal.T, axis=1)
        out.append(offset + np.concatenate([[0.0], np.cumsum(step)]))
        offset = out[-1][-1]
    return out


def gamma_directions(segment: np.ndarray) -> list[np.ndarray | None]:
    """For each q of a segment: the direction of approach if q is Gamma (along the segment), else None."""
    at_gamma = np.abs(segment).max(axis=1) < 1e-12
    directions: list[np.ndarray | None] = [None] * len(segment)
    for k in np.flatnonzero(at_gamma):
        directions[k] = segment[k + 1] - segment[k] if k + 1 < len(segment) else segment[k] - segment[k - 1]
    return directions
