"""The structures of the project's GPAW data set: small cells (at most 16 atoms) near equilibrium and under pressure.

In file order (``data/gpaw/label.sh`` labels them in ``dft.coverage_order``):

1. ``reference``: Si, 3C-SiC, MgO, NaCl and zincblende GaN, 2-atom cells at 97-103 % of their lattice constants,
   rattled 0.01-0.08 Å (the crystals of the frozen-phonon reference table), 40 of each (10 here, 30 after
   ``limno`` from a random stream of their own, so that the first 10 keep their ids);
2. ``sic``: 3C-SiC from 0 to ~60 GPa (volume 80-102 % of PBE's), primitive and 8-atom cubic cells;
3. ``mgo``: MgO B1 (rocksalt) and B2 (CsCl) from 0 to ~600 GPa (volume 50-102 % for B1, 45-80 % for B2);
4. ``batio3``: BaTiO3 perovskite cells with the strain and Ti/O displacement pattern of the cubic, tetragonal,
   orthorhombic and rhombohedral phases (Ti along [000], [001], [011], [111]), 5 and 10 atoms;
5. ``lah``: fcc LaH10 (11 atoms) and fcc LaH3 (4 atoms) at 100-250 GPa-like compressions;
6. ``limno``: layered LiMnO2 (R-3m, 4 and 16 atoms) with 0-3 Li removed (16-atom cells);
7. ``phonondb``: every DFPT *train* crystal of ``phonondb_bec_eps`` with at most ``max_primitive_atoms`` atoms,
   ``samples_per_crystal`` samples each: rattled (σ uniform in 0.01-0.08 Å) after a random symmetric strain of at
   most ±4 %.

Every structure gets ``info["category"]``, ``["base"]``, ``["structure_id"]`` and ``["split"]`` (train / val / test,
about 80/10/10 by :func:`split_of`: the test split is for reports only). Deterministic in ``seed``.
"""

from __future__ import annotations

import hashlib
import os

import ase
import numpy as np
from ase.build import bulk

from mtsim.training.builders._io import structure_id

LATTICE = {
    "Si": ("diamond", 5.47),
    "SiC": ("zincblende", 4.38),
    "MgO": ("rocksalt", 4.25),
    "NaCl": ("rocksalt", 5.70),
    "GaN": ("zincblende", 4.55),
}
"""Å. PBE-like lattice constants of the reference crystals."""
SPLITS = ("train", "val", "test")


def rattled(atoms: ase.Atoms, rng: np.random.Generator, low: float = 0.01, high: float = 0.08) -> ase.Atoms:
    atoms = atoms.copy()
    sigma = rng.uniform(low, high)
    atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
    atoms.info["rattle"] = round(float(sigma), 4)
    return atoms


def strained(atoms: ase.Atoms, rng: np.random.Generator, limit: float = 0.04) -> ase.Atoms:
    """A random symmetric strain with every component within ±limit."""
    eps = rng.uniform(-limit, limit, (3, 3))
    eps = (eps + eps.T) / 2
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return atoms


def scaled(atoms: ase.Atoms, volume_ratio: float) -> ase.Atoms:
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell[:] * volume_ratio ** (1 / 3), scale_atoms=True)
    atoms.info["volume_ratio"] = round(float(volume_ratio), 4)
    return atoms


def _tag(atoms: ase.Atoms, category: str, base: str) -> ase.Atoms:
    atoms.info["category"], atoms.info["base"] = category, base
    return atoms


def reference(rng, samples: int = 10) -> list[ase.Atoms]:
    frames = []
    for name, (lattice, a) in LATTICE.items():
        for _ in range(samples):
            atoms = bulk(name, lattice, a=a * rng.uniform(0.97, 1.03))
            frames.append(_tag(rattled(atoms, rng), "reference", name))
    return frames


def sic(rng) -> list[ase.Atoms]:
    frames = []
    for k in range(80):
        atoms = bulk("SiC", "zincblende", a=LATTICE["SiC"][1], cubic=k % 3 == 2)
        atoms = scaled(atoms, rng.uniform(0.80, 1.02))
        frames.append(_tag(rattled(strained(atoms, rng, 0.02), rng), "sic", f"SiC:{len(atoms)}"))
    return frames


def mgo(rng) -> list[ase.Atoms]:
    frames = []
    for k in range(100):
        if k % 2:
            atoms = scaled(bulk("MgO", "cesiumchloride", a=2.66), rng.uniform(0.45, 0.80))
            base = "MgO:B2"
        else:
            atoms = scaled(bulk("MgO", "rocksalt", a=4.25, cubic=k % 8 == 0), rng.uniform(0.50, 1.02))
            base = "MgO:B1"
        frames.append(_tag(rattled(strained(atoms, rng, 0.02), rng), "mgo", base))
    return frames


PHASES = {
    "cubic": (np.zeros(3), (1.0, 1.0, 1.0)),
    "tetragonal": (np.array([0, 0, 1.0]), (1.0, 1.0, 1.01)),
    "orthorhombic": (np.array([0, 1.0, 1.0]) / np.sqrt(2), (1.0, 1.005, 1.005)),
    "rhombohedral": (np.ones(3) / np.sqrt(3), (1.0, 1.0, 1.0)),
}


def perovskite(a: float = 4.0) -> ase.Atoms:
    return ase.Atoms(
        "BaTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=np.eye(3) * a,
        pbc=True,
    )


def batio3(rng) -> list[ase.Atoms]:
    frames = []
    for k in range(120):
        phase = list(PHASES)[k % 4]
        direction, stretch = PHASES[phase]
        atoms = perovskite(rng.uniform(3.96, 4.06))
        atoms.set_cell(atoms.cell[:] * np.array(stretch)[:, None], scale_atoms=True)
        shift = rng.uniform(0.04, 0.16) * direction
        atoms.positions[1] += shift  # Ti
        atoms.positions[2:] -= 0.5 * shift  # O against it
        if k % 5 == 4:
            atoms = atoms.repeat((1, 1, 2))
        frames.append(_tag(rattled(atoms, rng, 0.01, 0.06), "batio3", f"BaTiO3:{phase}"))
    return frames


def lah10(a: float, x: float = 0.378) -> ase.Atoms:
    """fcc LaH10 (Fm-3m) in its primitive cell: La on 4a, H on 8c and on 32f (x, x, x), the H32f forming cubes
    around the empty 4b sites (La–H 2.1 Å, H–H 1.1–1.2 Å at a = 5.1 Å)."""
    basis = [(0, 0, 0), (0.25, 0.25, 0.25), (0.75, 0.75, 0.75)]
    basis += [
        tuple(p)
        for p in np.array(
            [[x, x, x], [-x, -x, x], [-x, x, -x], [x, -x, -x], [-x, -x, -x], [x, x, -x], [x, -x, x], [-x, x, x]]
        )
        % 1.0
    ]
    conventional = ase.Atoms("LaH10", scaled_positions=basis, cell=np.eye(3) * a, pbc=True)
    return _primitive_fcc(conventional, a)


def lah3(a: float) -> ase.Atoms:
    conventional = ase.Atoms(
        "LaH3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.75, 0.75, 0.75)],
        cell=np.eye(3) * a,
        pbc=True,
    )
    return _primitive_fcc(conventional, a)


def _primitive_fcc(basis: ase.Atoms, a: float) -> ase.Atoms:
    """The fcc primitive cell holding ``basis`` (fractional positions of the conventional cube)."""
    cell = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]) * a
    atoms = ase.Atoms(basis.numbers, positions=basis.positions, cell=cell, pbc=True)
    atoms.wrap()
    return atoms


def lah(rng) -> list[ase.Atoms]:
    frames = []
    for k in range(60):
        if k % 3:
            atoms, base = lah10(rng.uniform(4.90, 5.30)), "LaH10:fcc"
        else:
            atoms, base = lah3(rng.uniform(4.20, 4.70)), "LaH3:fcc"
        frames.append(_tag(rattled(strained(atoms, rng, 0.02), rng, 0.01, 0.06), "lah", base))
    return frames


def layered_limno2(a: float = 2.81, c: float = 14.4, z_oxygen: float = 0.26) -> ase.Atoms:
    """LiMnO2 in the α-NaFeO2 (R-3m) structure, rhombohedral primitive cell (4 atoms)."""
    hexagonal = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])
    rhombohedral = np.array([[2 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, 1 / 3], [-1 / 3, -2 / 3, 1 / 3]]) @ hexagonal
    positions = np.array([[0, 0, 0], [0, 0, 0.5], [0, 0, z_oxygen], [0, 0, 1 - z_oxygen]]) @ hexagonal
    atoms = ase.Atoms("LiMnO2", positions=positions, cell=rhombohedral, pbc=True)
    atoms.wrap()
    return atoms


def limno(rng) -> list[ase.Atoms]:
    frames = []
    for k in range(40):
        atoms = layered_limno2(a=rng.uniform(2.76, 2.88), c=rng.uniform(14.0, 14.8))
        removed = 0
        if k % 4:
            atoms = atoms.repeat((2, 2, 1))
            removed = k % 4
            lithium = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Li"]
            del atoms[sorted(rng.choice(lithium, removed, replace=False).tolist(), reverse=True)]
        atoms = _tag(rattled(atoms, rng, 0.01, 0.05), "limno", f"Li{4 - removed if k % 4 else 1}MnO2:layered")
        atoms.info["li_removed"] = removed
        frames.append(atoms)
    return frames


def phonondb(
    path: str | os.PathLike, dfpt_manifest, rng, samples: int, max_primitive_atoms: int, max_atoms: int
) -> list[ase.Atoms]:
    from mtsim.training.builders.structures import base_structures

    bases = [
        a
        for a in base_structures(path, dfpt_manifest, elements=(), num_binaries=0)
        if len(a) <= min(max_primitive_atoms, max_atoms)
    ]
    frames = []
    for atoms in bases:
        for _ in range(samples):
            frames.append(_tag(rattled(strained(atoms, rng), rng), "phonondb", atoms.info["base"]))
    order = rng.permutation(len(frames))
    return [frames[k] for k in order]


def build(
    phonondb_path,
    dfpt_manifest=None,
    seed: int = 0,
    samples_per_crystal: int = 2,
    max_primitive_atoms: int = 10,
    max_atoms: int = 16,
) -> list[ase.Atoms]:
    """Every structure of the set, in file order, tagged and split."""
    frames = []
    case_studies = (reference, sic, mgo, batio3, lah, limno)
    for k, make in enumerate(case_studies):
        frames += make(np.random.default_rng([seed, k]))
    frames += reference(np.random.default_rng([seed, len(case_studies)]), samples=30)
    frames += phonondb(
        phonondb_path,
        dfpt_manifest,
        np.random.default_rng([seed, 99]),
        samples_per_crystal,
        max_primitive_atoms,
        max_atoms,
    )
    if any(len(a) > max_atoms for a in frames):
        raise ValueError(f"a structure of the set has more than {max_atoms} atoms")
    for atoms in frames:
        atoms.info["structure_id"] = structure_id(atoms)
        group = atoms.info["base"] if atoms.info["category"] == "phonondb" else atoms.info["structure_id"]
        atoms.info["split"] = split_of(group, seed)
    return frames


def split_of(group: str, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split (train / val / test) of a group of structures, from the sha256 of ``seed`` and ``group``: each group
    on its own, so that adding, removing or changing structures moves no other. A group is one structure, except the
    samples of one phonondb crystal, which share a split (no crystal in two splits)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big") / 2.0**64
    return "val" if u < fractions[1] else "test" if u < fractions[1] + fractions[2] else "train"
