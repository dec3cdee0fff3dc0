"""Off-equilibrium structures for distillation, scaled to a small machine: the explorer of the paper, in miniature.

Base structures (``base_structures``):

- the phonondb crystals (``--phonondb``: the DFPT file or its folder; with ``--dfpt-manifest``, only the crystals of
  the DFPT *train* split, so that the val/test crystals of the Born-charge task stay unseen);
- element prototypes across the periodic table (``ELEMENTS``: Z = 1-83 without the noble gases and without the
  molecular elements H, N, O, F, Cl, whose close-packed prototypes at covalent contact are absurdly dense) in fcc,
  bcc, hcp, diamond and simple cubic;
- binaries AB in rocksalt, CsCl, zincblende, wurtzite and AB2 in fluorite, the pairs drawn with the seed (cation from
  the metals, anion from ``ANIONS``).

Lattice constants of the prototypes come from a nearest-neighbour distance ``d = r_A + r_B`` with ASE's covalent
radii (``ase.data.covalent_radii``): fcc ``a = sqrt(2) d``, bcc ``a = 2d/sqrt(3)``, hcp ``a = d, c = sqrt(8/3) a``,
diamond and zincblende and fluorite ``a = 4d/sqrt(3)``, sc ``a = d``, rocksalt ``a = 2d``, CsCl ``a = 2d/sqrt(3)``,
wurtzite ``a = sqrt(8/3) d, c = sqrt(8/3) a``. Rough by design: the samples are meant to be off equilibrium.

Each sample (``sample``) takes one base structure, repeated to at least ``min_atoms`` atoms, and applies one of

- ``rattle``: Gaussian displacements, sigma uniform in [0.02, 0.15] Å;
- ``strain``: a random symmetric strain with principal strains in [-0.2, +0.2] (cell -> cell (1 + eps)) and a
  small rattle (0.03 Å);
- ``compress``: isotropic compression to 70-90 % of the volume (-30 % of the volume is of the order of 100 GPa for
  most solids) and a small rattle (0.03 Å);
- ``md`` (only with a teacher calculator, ``md_steps > 0``): Langevin MD with the teacher at T uniform in
  300-3000 K for ``md_steps`` steps of 1 fs from the base structure, last frame kept.

A sample whose shortest interatomic distance is below ``max(0.5 Å, 0.5 (r_i + r_j))``, or with more than
``MAX_NEIGHBOURS`` neighbours per atom within ``DENSITY_CUTOFF`` (dense solids have ~40-100 within 5 Å), is drawn
again (up to 20 times, then skipped). Deterministic: sample k uses ``numpy.random.default_rng([seed, k])``. The
applied strain, the rattle amplitude, the volume ratio, the base name and the base's ``structure_id`` go into
``atoms.info``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import ase
import ase.io
import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers, chemical_symbols, covalent_radii
from ase.neighborlist import neighbor_list

from mtsim.training.builders._io import Progress, structure_id, write_frames, write_manifest

NOBLE_GASES = {2, 10, 18, 36, 54, 86}
MOLECULAR = {"H", "N", "O", "F", "Cl"}
ELEMENTS = tuple(
    chemical_symbols[z] for z in range(1, 84) if z not in NOBLE_GASES and chemical_symbols[z] not in MOLECULAR
)
ANIONS = ("B", "C", "N", "O", "F", "P", "S", "Cl", "As", "Se", "Br", "Sb", "Te", "I", "H")
NONMETALS = {"H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I", "At", "Ge", "Sb"}
ELEMENT_LATTICES = ("fcc", "bcc", "hcp", "diamond", "sc")
BINARY_LATTICES = ("rocksalt", "cesiumchloride", "zincblende", "wurtzite", "fluorite")
KINDS = ("rattle", "strain", "compress", "md")
DEFAULT_WEIGHTS = {"rattle": 0.4, "strain": 0.35, "compress": 0.25, "md": 0.0}
DEFAULT_MIX = {"phonondb": 0.5, "element": 0.3, "binary": 0.2}
"""How often each category of base structure is drawn (renormalised over the categories present)."""
STRAIN_RANGE = 0.2
VOLUME_RANGE = (0.7, 0.9)
RATTLE_RANGE = (0.02, 0.15)
MIN_DISTANCE = 0.5
MAX_NEIGHBOURS = 150
DENSITY_CUTOFF = 5.0


def radius(symbol: str) -> float:
    return float(covalent_radii[atomic_numbers[symbol]])


def element_prototype(symbol: str, lattice: str) -> ase.Atoms:
    d = 2 * radius(symbol)
    if lattice == "fcc":
        return bulk(symbol, "fcc", a=np.sqrt(2) * d)
    if lattice == "bcc":
        return bulk(symbol, "bcc", a=2 * d / np.sqrt(3))
    if lattice == "hcp":
        return bulk(symbol, "hcp", a=d, c=np.sqrt(8 / 3) * d)
    if lattice == "diamond":
        return bulk(symbol, "diamond", a=4 * d / np.sqrt(3))
    if lattice == "sc":
        return bulk(symbol, "sc", a=d)
    raise ValueError(f"unknown element lattice {lattice!r}")


def binary_prototype(cation: str, anion: str, lattice: str) -> ase.Atoms:
    d = radius(cation) + radius(anion)
    if lattice == "rocksalt":
        return bulk(cation + anion, "rocksalt", a=2 * d)
    if lattice == "cesiumchloride":
        return bulk(cation + anion, "cesiumchloride", a=2 * d / np.sqrt(3))
    if lattice == "zincblende":
        return bulk(cation + anion, "zincblende", a=4 * d / np.sqrt(3))
    if lattice == "wurtzite":
        a = np.sqrt(8 / 3) * d
        return bulk(cation + anion, "wurtzite", a=a, c=np.sqrt(8 / 3) * a, u=0.375)
    if lattice == "fluorite":
        return bulk(cation + anion + anion, "fluorite", a=4 * d / np.sqrt(3))
    raise ValueError(f"unknown binary lattice {lattice!r}")


def base_structures(
    phonondb: str | os.PathLike | None = None,
    dfpt_manifest: str | os.PathLike | None = None,
    elements: Sequence[str] = ELEMENTS,
    element_lattices: Sequence[str] = ELEMENT_LATTICES,
    num_binaries: int = 60,
    seed: int = 0,
) -> list[ase.Atoms]:
    """The base structures, each with ``atoms.info["base"]`` (a name) and ``["structure_id"]``."""
    bases = []
    if phonondb is not None:
        from mtsim.training.builders.dfpt import read_dfpt

        frames = read_dfpt(phonondb)
        if dfpt_manifest is not None:
            with open(dfpt_manifest) as handle:
                allowed = set(json.load(handle)["splits"]["train"]["structure_ids"])
            frames = [a for a in frames if a.info["structure_id"] in allowed]
        for atoms in frames:
            base = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
            base.info["base"] = f"phonondb:{atoms.info['source_index']}:{atoms.info['formula']}"
            base.info["category"] = "phonondb"
            bases.append(base)
    for symbol in elements:
        for lattice in element_lattices:
            atoms = element_prototype(symbol, lattice)
            atoms.info["base"] = f"{symbol}:{lattice}"
            atoms.info["category"] = "element"
            bases.append(atoms)
    rng = np.random.default_rng([seed, 7919])
    cations = [s for s in elements if s not in NONMETALS]
    anions = [s for s in ANIONS if s in elements]
    if num_binaries and cations and anions:
        for k in range(num_binaries):
            cation, anion = cations[rng.integers(len(cations))], anions[rng.integers(len(anions))]
            lattice = BINARY_LATTICES[k % len(BINARY_LATTICES)]
            atoms = binary_prototype(cation, anion, lattice)
            atoms.info["base"] = f"{cation}{anion}{'2' if lattice == 'fluorite' else ''}:{lattice}"
            atoms.info["category"] = "binary"
            bases.append(atoms)
    for atoms in bases:
        atoms.info["structure_id"] = structure_id(atoms)
    return bases


def supercell(atoms: ase.Atoms, min_atoms: int) -> ase.Atoms:
    """``atoms`` repeated along its shortest cell vectors until it has at least ``min_atoms`` atoms."""
    reps = np.ones(3, dtype=int)
    lengths = atoms.cell.lengths()
    while len(atoms) * reps.prod() < min_atoms:
        reps[np.argmin(lengths * reps)] += 1
    out = atoms.repeat(tuple(reps))
    out.info = dict(atoms.info)
    return out


def min_distance_ok(atoms: ase.Atoms, min_distance: float = MIN_DISTANCE, radius_fraction: float = 0.5) -> bool:
    """No two atoms closer than ``max(min_distance, radius_fraction * (r_i + r_j))`` (covalent radii)."""
    cutoff = max(min_distance, 2 * radius_fraction * float(covalent_radii[atoms.numbers].max()))
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    if len(d) == 0:
        return True
    limit = np.maximum(
        min_distance, radius_fraction * (covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]])
    )
    return bool((d >= limit).all())


def density_ok(atoms: ase.Atoms, max_neighbours: float = MAX_NEIGHBOURS, cutoff: float = DENSITY_CUTOFF) -> bool:
    """At most ``max_neighbours`` neighbours per atom (on average) within ``cutoff`` Å."""
    return len(neighbor_list("i", atoms, cutoff)) <= max_neighbours * len(atoms)


def random_strain(rng: np.random.Generator, limit: float = STRAIN_RANGE) -> np.ndarray:
    """A symmetric 3x3 strain with principal strains uniform in [-limit, limit] along random axes."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q @ np.diag(rng.uniform(-limit, limit, 3)) @ q.T


def deform(atoms: ase.Atoms, strain: np.ndarray) -> ase.Atoms:
    """``atoms`` with cell and positions mapped by ``1 + strain`` (row vectors: ``x -> x (1 + eps)``)."""
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    return out


def rattle(atoms: ase.Atoms, sigma: float, rng: np.random.Generator) -> ase.Atoms:
    out = atoms.copy()
    out.positions = atoms.positions + rng.normal(scale=sigma, size=atoms.positions.shape)
    return out


def sample(
    base: ase.Atoms, kind: str, rng: np.random.Generator, min_atoms: int = 8, calculator=None, md_steps: int = 0
) -> ase.Atoms:
    """One off-equilibrium sample of ``base`` (see the module docstring)."""
    atoms = supercell(base, min_atoms)
    strain, sigma = np.zeros((3, 3)), 0.0
    if kind == "rattle":
        sigma = rng.uniform(*RATTLE_RANGE)
        out = rattle(atoms, sigma, rng)
    elif kind == "strain":
        strain, sigma = random_strain(rng), 0.03
        out = rattle(deform(atoms, strain), sigma, rng)
    elif kind == "compress":
        ratio = rng.uniform(*VOLUME_RANGE)
        strain, sigma = (ratio ** (1 / 3) - 1) * np.eye(3), 0.03
        out = rattle(deform(atoms, strain), sigma, rng)
    elif kind == "md":
        if calculator is None or md_steps <= 0:
            raise ValueError("an 'md' sample needs a teacher calculator and md_steps > 0")
        out = teacher_md(atoms, calculator, rng.uniform(300.0, 3000.0), md_steps, int(rng.integers(2**31)))
    else:
        raise ValueError(f"unknown sample kind {kind!r}; kinds are {KINDS}")
    temperature = out.info.get("md_temperature")
    out.info = {
        "base": base.info.get("base", ""),
        "category": base.info.get("category", "other"),
        "base_id": base.info.get("structure_id", structure_id(base)),
        "kind": kind,
        "strain": strain.reshape(9),
        "rattle": float(sigma),
        "volume_ratio": float(out.get_volume() / atoms.get_volume()),
    }
    if temperature is not None:
        out.info["md_temperature"] = float(temperature)
    return out


def teacher_md(atoms: ase.Atoms, calculator, temperature: float, steps: int, seed: int) -> ase.Atoms:
    """Last frame of a short Langevin run (1 fs steps, friction 0.02/fs) of ``atoms`` with ``calculator``."""
    from ase import units
    from ase.md.langevin import Langevin

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ase < 3.26
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

    work = atoms.copy()
    work.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize_momenta(work, temperature_K=temperature, rng=rng)
    dyn = Langevin(work, 1.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, rng=rng, fixcm=False)
    dyn.run(steps)
    out = ase.Atoms(numbers=work.numbers, positions=work.positions, cell=work.cell, pbc=work.pbc)
    out.info["md_temperature"] = temperature
    return out


def generate(
    bases: Sequence[ase.Atoms],
    num_samples: int,
    seed: int = 0,
    weights: dict | None = None,
    min_atoms: int = 8,
    calculator=None,
    md_steps: int = 0,
    max_tries: int = 20,
    mix: dict | None = None,
    quiet: bool = True,
) -> list[ase.Atoms]:
    """``num_samples`` samples: sample k uses ``default_rng([seed, k])`` to pick a category of base structures
    (by ``mix``, default ``DEFAULT_MIX``; bases without ``info["category"]`` count as ``"other"``, weight 1), a
    base of it (uniformly) and a kind (by ``weights``, default ``DEFAULT_WEIGHTS``; ``md`` only with a calculator
    and ``md_steps > 0``)."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    by_category: dict[str, list[ase.Atoms]] = {}
    for base in bases:
        by_category.setdefault(base.info.get("category", "other"), []).append(base)
    categories = sorted(c for c in by_category if mix.get(c, 1.0 if c == "other" else 0.0) > 0)
    if not categories:
        raise ValueError("no category of base structures has a positive weight")
    mix_prob = np.array([mix.get(c, 1.0) for c in categories], dtype=float)
    mix_prob /= mix_prob.sum()
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if calculator is None or md_steps <= 0:
        weights["md"] = 0.0
    kinds = [k for k in KINDS if weights.get(k, 0.0) > 0]
    if not kinds:
        raise ValueError("no sample kind has a positive weight")
    prob = np.array([weights[k] for k in kinds], dtype=float)
    prob /= prob.sum()
    frames = []
    progress = Progress("structures", num_samples, quiet=quiet)
    for k in range(num_samples):
        rng = np.random.default_rng([seed, k])
        pool = by_category[categories[int(rng.choice(len(categories), p=mix_prob))]]
        base = pool[int(rng.integers(len(pool)))]
        kind = kinds[int(rng.choice(len(kinds), p=prob))]
        for _ in range(max_tries):
            atoms = sample(base, kind, rng, min_atoms, calculator, md_steps)
            if min_distance_ok(atoms) and density_ok(atoms):
                atoms.info["sample"] = k
                atoms.info["seed"] = seed
                frames.append(atoms)
                break
        progress.update(k + 1)
    return frames


def parse_weights(items: Sequence[str], names: Sequence[str], option: str) -> dict[str, float]:
    """``["binary=0.5", ...]`` -> ``{"binary": 0.5, ...}`` for the names in ``names`` (``option`` names the flag in
    errors)."""
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise SystemExit(f"{option}: expected NAME=WEIGHT, NAME one of {sorted(names)}; got {item!r}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise SystemExit(f"{option}: weight of {name!r} is not a number: {value!r}") from None
        if not np.isfinite(weights[name]) or weights[name] < 0:
            raise SystemExit(f"{option}: weight of {name!r} must be finite and >= 0, got {value!r}")
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtsim.training.builders.structures", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", default=None, help="phonondb_bec_eps folder or file (optional: its crystals)")
    parser.add_argument(
        "--dfpt-manifest",
        default=None,
        help="manifest.json of the DFPT builder: use only the crystals of its train split",
    )
    parser.add_argument("--out", required=True, help="output extxyz (a .manifest.json is written beside it)")
    parser.add_argument("--size", type=int, default=200, help="number of samples (default 200)")
    parser.add_argument("--binaries", type=int, default=60, help="number of binary prototypes drawn (default 60)")
    default_mix = " ".join(f"{k}={v}" for k, v in DEFAULT_MIX.items())
    parser.add_argument(
        "--mix",
        nargs="*",
        default=None,
        metavar="CATEGORY=WEIGHT",
        help="how often each category of base structure is drawn, e.g. phonondb=0.25 element=0.25 "
        f"binary=0.5; categories not named are not drawn (default: {default_mix})",
    )
    default_kinds = " ".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items() if k != "md")
    parser.add_argument(
        "--kinds",
        nargs="*",
        default=None,
        metavar="KIND=WEIGHT",
        help="how often each sample kind is drawn, e.g. rattle=0.2 strain=0.4 compress=0.4; kinds "
        f"not named are not drawn ('md' is set by --md-weight; default: {default_kinds})",
    )
    parser.add_argument("--elements", nargs="*", default=None, help="element symbols (default: Z 1-83, no noble gases)")
    parser.add_argument("--min-atoms", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--md-steps",
        type=int,
        default=0,
        help="teacher MD steps per 'md' sample (0: no MD; > 0 needs the teacher extra)",
    )
    parser.add_argument("--md-weight", type=float, default=0.15, help="fraction of 'md' samples when --md-steps > 0")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    elements = tuple(args.elements) if args.elements else ELEMENTS
    mix = parse_weights(args.mix, tuple(DEFAULT_MIX), "--mix") if args.mix else None
    bases = base_structures(args.data, args.dfpt_manifest, elements, num_binaries=args.binaries, seed=args.seed)
    calculator = None
    drawn_kinds = tuple(k for k in KINDS if k != "md")  # md samples are set by --md-steps and --md-weight
    weights = parse_weights(args.kinds, drawn_kinds, "--kinds") if args.kinds else dict(DEFAULT_WEIGHTS)
    if args.md_steps > 0:
        from mtsim.training.builders.teacher import teacher_calculator

        calculator = teacher_calculator()
        weights["md"] = args.md_weight
    if not args.quiet:
        print(f"[structures] {len(bases)} base structures", file=sys.stderr, flush=True)
    frames = generate(
        bases, args.size, args.seed, weights, args.min_atoms, calculator, args.md_steps, mix=mix, quiet=args.quiet
    )
    write_frames(args.out, frames)
    kinds = {k: sum(a.info["kind"] == k for a in frames) for k in KINDS}
    write_manifest(
        os.path.splitext(args.out)[0] + ".manifest.json",
        {
            "builder": "mtsim.training.builders.structures",
            "seed": args.seed,
            "size": args.size,
            "written": len(frames),
            "kinds": kinds,
            "bases": len(bases),
            "binaries": args.binaries,
            "mix": mix or DEFAULT_MIX,
            "kind_weights": {k: v for k, v in weights.items() if v > 0},
            "phonondb": os.path.basename(os.fspath(args.data)) if args.data else None,
            "dfpt_train_only": args.dfpt_manifest is not None,
            "md_steps": args.md_steps,
            "atoms": int(sum(len(a) for a in frames)),
            "max_atoms": max((len(a) for a in frames), default=0),
            "strain_range": STRAIN_RANGE,
            "volume_range": VOLUME_RANGE,
            "rattle_range": RATTLE_RANGE,
        },
    )
    if not args.quiet:
        print(f"[structures] wrote {len(frames)} structures to {args.out} ({kinds})", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
