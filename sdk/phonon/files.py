"""Files phonopy reads: FORCE_CONSTANTS, BORN, band.yaml, POSCAR; and JSON of numpy data.

FORCE_CONSTANTS: full supercell force constants (eV/Å^2) in phonopy's supercell atom order. BORN: the NAC factor
(e^2/(4 pi eps0) in eV·Å), eps_inf, and Z* of the symmetry-independent atoms. band.yaml follows phonopy's layout
(frequencies in THz, distances in 1/Å without 2 pi), so ``phonopy-bandplot`` can draw it.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
from ase.data import chemical_symbols

from mtsim.phonon.bands import BandStructure
from mtsim.structure import Structure
from mtsim.units import COULOMB_EV_A


def write_force_constants(path, full_force_constants: np.ndarray) -> None:
    """phonopy's FORCE_CONSTANTS text format of [n_s, n_s, 3, 3] force constants."""
    n = full_force_constants.shape[0]
    lines = [f"{n:4d} {n:4d}"]
    for i in range(n):
        for j in range(n):
            lines.append(f"{i + 1} {j + 1}")
            lines += ["".join(f"{x:22.15f}" for x in row) for row in full_force_constants[i, j]]
    Path(path).write_text("\n".join(lines) + "\n")


def write_born(path, born: np.ndarray, dielectric: np.ndarray, independent_atoms: np.ndarray) -> None:
    """phonopy's BORN format: factor, eps_inf (9 numbers), then Z* (9 numbers, ``Z[a, b] = dF_b/dE_a``) of each
    symmetry-independent atom."""
    atoms = " ".join(str(int(a) + 1) for a in independent_atoms)
    lines = [
        f"{COULOMB_EV_A:.8f}   # NAC factor e^2/(4 pi eps0) in eV*A; eps_inf, then Z* of atoms {atoms}",
        " ".join(f"{x:13.8f}" for x in np.ravel(dielectric)),
    ]
    lines += [" ".join(f"{x:13.8f}" for x in np.ravel(born[a])) for a in independent_atoms]
    Path(path).write_text("\n".join(lines) + "\n")


def write_poscar(path, structure: Structure) -> None:
    """VASP POSCAR (direct coordinates), phonopy's unit-cell input."""
    ase.io.write(path, structure.to_atoms(), format="vasp", direct=True)


def write_band_yaml(path, bands: BandStructure, unitcell: Structure, masses: np.ndarray) -> None:
    """phonopy-style band.yaml."""
    reciprocal = np.linalg.inv(unitcell.cell).T
    frac = unitcell.positions @ np.linalg.inv(unitcell.cell)
    lines = [f"nqpoint: {sum(len(s) for s in bands.segments)}", f"npath: {len(bands.segments)}", "segment_nqpoint:"]
    lines += [f"- {len(s)}" for s in bands.segments]
    lines.append("labels:")
    lines += [f"- [ '{_label(a)}', '{_label(b)}' ]" for a, b in bands.labels]
    lines.append("reciprocal_lattice:")
    lines += [f"- [ {_vector(v)} ] # {axis}" for v, axis in zip(reciprocal, ("a*", "b*", "c*"))]
    lines += [f"natom: {len(unitcell)}", "lattice:"]
    lines += [f"- [ {_vector(v)} ] # {axis}" for v, axis in zip(unitcell.cell, "abc")]
    lines.append("points:")
    for k, (z, x, m) in enumerate(zip(unitcell.numbers, frac, masses)):
        lines += [f"- symbol: {chemical_symbols[z]} # {k + 1}", f"  coordinates: [ {_vector(x)} ]", f"  mass: {m:.6f}"]
    lines += ["", "phonon:"]
    for q, d, f in zip(bands.qpoints, np.concatenate(bands.distances), np.concatenate(bands.frequencies)):
        lines += [f"- q-position: [ {_vector(q)} ]", f"  distance: {d:12.7f}", "  band:"]
        for b, value in enumerate(f):
            lines += [f"  - # {b + 1}", f"    frequency: {value:15.10f}"]
        lines.append("")
    Path(path).write_text("\n".join(lines))


def write_json(path, data: dict) -> None:
    """JSON with numpy arrays and scalars converted to lists and numbers."""
    Path(path).write_text(json.dumps(data, indent=1, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _label(name: str) -> str:
    return "$\\Gamma$" if name == "G" else name


def _vector(v) -> str:
    return ", ".join(f"{x:13.10f}" for x in v)
