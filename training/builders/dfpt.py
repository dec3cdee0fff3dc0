"""Born charges and eps_inf from the DFPT data set (``phonondb_bec_eps``), in the training layout, split by structure.

Input: ``phonon_becs_epsilon.xyz`` (extxyz, ``Properties=species:S:1:pos:R:3:becs:R:9``, per-structure ``eps``, 9
numbers). Output, in ``--out``: ``train.extxyz``, ``val.extxyz``, ``test.extxyz`` with the labels under the keys the
training package reads first (``mtsim.training.data.DEFAULT_KEYS``)

- ``born_charges`` (per atom, 9 numbers, row-major ``Z[a, b]``, **first index the electric field**, second the
  displacement: ``Z[i, a, b] = dF_ib/dE_a = Omega/e dP_a/du_ib``, phonopy's convention), e;
- ``dielectric`` (``atoms.info``, 9 numbers, row-major), the electronic (clamped-ion) eps_inf;

plus ``structure_id`` (content hash, ``_io.structure_id``), ``source_index`` (frame index in the input) and ``split``
in ``atoms.info``, and ``manifest.json`` recording the source file's sha256, the seed, the fractions and the structure
ids of every split (with a hash of each list), so that a split can be checked and reproduced.

The split is by structure: structures (or, with ``group="formula"``, all structures of one reduced formula) are
shuffled with a seeded generator after sorting their ids, so the split depends only on the set of structures and the
seed, not on the order of the file. The test split is meant for the final report only: never train on it or use it
for model selection.

Index convention of the source file (checked, see ``check_convention``): the ``becs`` of ``phonon_becs_epsilon.xyz``
already have the field index first, so the default conversion is the identity. The check, run on the real data
(``python -m mtsim.training.builders.dfpt --data ... --check-against .../allegro_pol/SiO2_alpha_quartz_201.xyz``):

1. In the allegro-pol alpha-quartz frames (QE, Berry phase), the change of the polarization between consecutive
   frames is predicted by ``sum_i Z_i du_i`` with the field index first to a relative residual of 2.8 % (fitted scale
   1.005), against 12 % with the indices swapped: those ``born_charge`` are field-first.
2. Both enantiomorphs of alpha-quartz in the phonondb file (frames 752, P3_121, and 1467, P3_221) were mapped atom by
   atom onto the (time-averaged) allegro-pol quartz by local orthogonal alignments (proper or improper; Born charges
   are polar rank-2 tensors, ``Z -> R Z R^T``). The antisymmetric parts of the aligned tensors (up to 0.55 e in the
   phonondb file) correlate with the field-first reference at +0.99 (swapped indices would give -0.99).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Sequence

import ase
import ase.io
import numpy as np

from mtsim.training.builders._io import Progress, list_sha256, structure_id, write_frames, write_manifest
from mtsim.training.checkpoint import file_sha256

FIELD_FIRST = "field-first"
DISPLACEMENT_FIRST = "displacement-first"
SOURCE_FILE = "phonon_becs_epsilon.xyz"
SOURCE_CONVENTION = FIELD_FIRST
"""Index order of the ``becs`` in ``phonon_becs_epsilon.xyz`` (established by ``check_convention``)."""
SPLITS = ("train", "val", "test")


def to_field_first(born: np.ndarray, convention: str) -> np.ndarray:
    """Born charges [n, 3, 3] (or [n, 9]) given in ``convention`` as [n, 3, 3] with the field index first."""
    z = np.asarray(born, dtype=np.float64).reshape(-1, 3, 3)
    if convention == FIELD_FIRST:
        return z.copy()
    if convention == DISPLACEMENT_FIRST:
        return z.transpose(0, 2, 1).copy()
    raise ValueError(f"unknown Born charge convention {convention!r}; use {FIELD_FIRST!r} or {DISPLACEMENT_FIRST!r}")


def source_file(data: str | os.PathLike) -> str:
    """The DFPT extxyz file: ``data`` itself, or ``data/phonon_becs_epsilon.xyz`` if ``data`` is a folder."""
    data = os.fspath(data)
    path = os.path.join(data, SOURCE_FILE) if os.path.isdir(data) else data
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no DFPT data file at {path}")
    return path


def convert_frame(
    atoms: ase.Atoms, index: int, convention: str = SOURCE_CONVENTION, becs_key: str = "becs", eps_key: str = "eps"
) -> ase.Atoms:
    """One input frame in the training layout (structure, ``born_charges`` field-first, ``dielectric``)."""
    if becs_key not in atoms.arrays or eps_key not in atoms.info:
        raise ValueError(f"frame {index}: missing {becs_key!r} (per atom) or {eps_key!r} (per structure)")
    out = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    born = to_field_first(atoms.arrays[becs_key], convention)
    eps = np.asarray(atoms.info[eps_key], dtype=np.float64).reshape(3, 3)
    out.arrays["born_charges"] = born.reshape(len(out), 9)
    out.info["dielectric"] = eps.reshape(9)
    out.info["structure_id"] = structure_id(out)
    out.info["source_index"] = int(index)
    out.info["formula"] = out.get_chemical_formula(mode="hill", empirical=True)
    return out


def read_dfpt(data: str | os.PathLike, convention: str = SOURCE_CONVENTION) -> list[ase.Atoms]:
    """All frames of the DFPT file (``data``: the file or its folder), converted (``convert_frame``)."""
    frames = ase.io.read(source_file(data), index=":", format="extxyz")
    return [convert_frame(atoms, k, convention) for k, atoms in enumerate(frames)]


def split_groups(
    keys: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[int]]:
    """Indices of ``keys`` per split (``SPLITS``), whole groups of equal keys at a time.

    The distinct keys are sorted, then permuted by ``numpy.random.default_rng(seed)``; the first ``round(f_val*G)``
    groups go to val, the next ``round(f_test*G)`` to test, the rest to train (G groups). Deterministic, independent
    of the order of ``keys``, and disjoint by construction."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    groups = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(groups))
    num_val, num_test = (int(round(f * len(groups))) for f in fractions[1:])
    if num_val + num_test > len(groups):
        raise ValueError(f"{len(groups)} groups are too few for the fractions {list(fractions)}")
    where = {}
    for rank, g in enumerate(order):
        where[groups[g]] = "val" if rank < num_val else "test" if rank < num_val + num_test else "train"
    result = {name: [] for name in SPLITS}
    for k, key in enumerate(keys):
        result[where[key]].append(k)
    return result


def build(
    data: str | os.PathLike,
    out: str | os.PathLike,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    convention: str = SOURCE_CONVENTION,
    group: str = "structure",
    check_against: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict:
    """Write ``train/val/test.extxyz`` and ``manifest.json`` into ``out``; return the manifest."""
    path = source_file(data)
    if not quiet:
        print(f"[dfpt] reading {path}", file=sys.stderr, flush=True)
    frames = read_dfpt(path, convention)
    if group == "structure":
        keys = [a.info["structure_id"] for a in frames]
    elif group == "formula":
        keys = [a.info["formula"] for a in frames]
    else:
        raise ValueError(f"group must be 'structure' or 'formula', got {group!r}")
    splits = split_groups(keys, fractions, seed)
    os.makedirs(out, exist_ok=True)
    manifest = {
        "builder": "mtsim.training.builders.dfpt",
        "source": {
            "file": os.path.basename(path),
            "sha256": file_sha256(path),
            "frames": len(frames),
            "origin": "phonondb_bec_eps (github.com/shiangfang/e3nn-models data/phonon_becs_epsilon.xyz), DFPT",
        },
        "labels": {
            "born_charges": "e, per atom, 9 numbers row-major Z[a,b], a = field, b = displacement "
            "(Z[i,a,b] = dF_ib/dE_a, phonopy's order)",
            "dielectric": "eps_inf (electronic), 9 numbers row-major",
        },
        "source_convention": convention,
        "seed": seed,
        "fractions": list(fractions),
        "group_by": group,
        "note": "the test split is for the final report only: never train on it or use it for model selection",
        "splits": {},
    }
    progress = Progress("dfpt", len(SPLITS), quiet=quiet)
    for n, name in enumerate(SPLITS):
        chosen = [frames[k] for k in splits[name]]
        for atoms in chosen:
            atoms.info["split"] = name
        write_frames(os.path.join(out, f"{name}.extxyz"), chosen)
        ids = sorted({a.info["structure_id"] for a in chosen})
        manifest["splits"][name] = {
            "file": f"{name}.extxyz",
            "structures": len(chosen),
            "atoms": int(sum(len(a) for a in chosen)),
            "elements": sorted({s for a in chosen for s in a.get_chemical_symbols()}),
            "structure_ids_sha256": list_sha256(ids),
            "source_indices": [a.info["source_index"] for a in chosen],
            "structure_ids": ids,
        }
        progress.update(n + 1, force=True)
    if check_against is not None:
        manifest["convention_check"] = check_convention(path, check_against)
    write_manifest(os.path.join(out, "manifest.json"), manifest)
    if not quiet:
        counts = ", ".join(f"{k} {v['structures']}" for k, v in manifest["splits"].items())
        print(f"[dfpt] wrote {out}: {counts}", file=sys.stderr, flush=True)
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# The index-convention check (needs the real data; see the module docstring for its result)


def polarization_residuals(frames, key: str = "born_charge") -> dict[str, float]:
    """Relative residual of ``P(n) - P(n-1) ~ c * sum_i Zbar_i du_i`` over consecutive frames of a fixed-cell
    trajectory carrying ``polarization`` and per-atom Born charges under ``key``, with the field index first and
    with it second (``Zbar``: mean of the two frames' tensors; ``c`` fitted). The smaller residual tells the order."""

    def pol(atoms):
        return np.asarray(
            atoms.calc.results["polarization"]
            if atoms.calc is not None and "polarization" in atoms.calc.results
            else atoms.info["polarization"],
            float,
        )

    cell = frames[0].cell[:]
    preds = {FIELD_FIRST: [], DISPLACEMENT_FIRST: []}
    deltas = []
    for prev, cur in zip(frames[:-1], frames[1:]):
        frac = np.linalg.solve(cell.T, (cur.positions - prev.positions).T).T
        du = (frac - np.round(frac)) @ cell
        zbar = 0.5 * (cur.arrays[key] + prev.arrays[key]).reshape(-1, 3, 3)
        preds[FIELD_FIRST].append(np.einsum("iab,ib->a", zbar, du))
        preds[DISPLACEMENT_FIRST].append(np.einsum("iba,ib->a", zbar, du))
        deltas.append(pol(cur) - pol(prev))
    deltas = np.array(deltas)
    result = {}
    for name, pred in preds.items():
        pred = np.array(pred)
        scale = float((pred * deltas).sum() / (pred * pred).sum())
        result[name] = {
            "scale": scale,
            "relative_residual": float(np.linalg.norm(deltas - scale * pred) / np.linalg.norm(deltas)),
        }
    return result


def _environment(atoms, index: int, cutoff: float):
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijD", atoms, cutoff)
    return d[i == index], atoms.numbers[j[i == index]]


def _align(v1, z1, v2, z2):
    """Orthogonal R (proper or improper) taking environment 1 onto environment 2, chosen among the Kabsch fits of
    the three nearest neighbours of 1 onto same-species neighbours of 2 by the fit of the whole environment."""
    nearest = np.argsort(np.linalg.norm(v1, axis=1))[:3]
    best = (np.inf, None)
    for triple in itertools.permutations(range(len(v2)), 3):
        if any(z2[t] != z1[o] for t, o in zip(triple, nearest)):
            continue
        a, b = v1[nearest], v2[list(triple)]
        if np.abs(np.linalg.norm(a, axis=1) - np.linalg.norm(b, axis=1)).max() > 0.15:
            continue
        u, _, vt = np.linalg.svd(a.T @ b)
        rot = (u @ vt).T
        moved = v1 @ rot.T
        cost = 0.0
        for k in range(len(moved)):
            dist = np.linalg.norm(v2 - moved[k], axis=1)
            dist[z2 != z1[k]] = np.inf
            cost += min(dist.min(), 9.0) ** 2
        if cost < best[0]:
            best = (cost, rot)
    return best


def antisymmetric_correlation(
    frames_a: Sequence[ase.Atoms],
    born_a: Sequence[np.ndarray],
    reference: ase.Atoms,
    born_ref: np.ndarray,
    cutoff: float = 3.2,
    max_cost: float = 1.0,
) -> float:
    """Correlation of the antisymmetric parts of the Born tensors of ``frames_a`` (aligned atom by atom onto every
    same-species atom of ``reference``) with those of ``reference``: near +1 if both use the same index order, near
    -1 if one is the transpose of the other (the antisymmetric part flips sign under transposition). Pairs whose
    environments do not match (summed squared misfit of the aligned neighbours within ``cutoff`` above
    ``max_cost`` Å^2: inequivalent sites) are left out."""
    x, y = [], []
    upper = np.triu_indices(3, 1)
    for atoms, born in zip(frames_a, born_a):
        for i in range(len(atoms)):
            v1, z1 = _environment(atoms, i, cutoff)
            for j in np.flatnonzero(reference.numbers == atoms.numbers[i]):
                v2, z2 = _environment(reference, j, cutoff + 0.4)
                cost, rot = _align(v1, z1, v2, z2)
                if rot is None or cost > max_cost:
                    continue
                z = rot @ born[i] @ rot.T
                x.append((z - z.T)[upper])
                y.append((born_ref[j] - born_ref[j].T)[upper])
    if not x:
        raise ValueError("no pair of atoms with matching environments")
    return float(np.corrcoef(np.ravel(x), np.ravel(y))[0, 1])


def check_convention(dfpt_path: str | os.PathLike, quartz_path: str | os.PathLike) -> dict:
    """Establish the index order of the DFPT file's ``becs`` against the allegro-pol alpha-quartz trajectory
    (``SiO2_alpha_quartz_201.xyz``): its own order from the polarization changes, then the phonondb quartz frames'
    order from the sign of the correlation of aligned antisymmetric parts. Returns the numbers and the verdict."""
    traj = ase.io.read(quartz_path, index=":")
    pol = polarization_residuals(traj)
    ref_order = min(pol, key=lambda k: pol[k]["relative_residual"])
    # time-averaged reference structure and Born charges (in the reference's own order, made field-first)
    cell = traj[0].cell[:]
    pos = np.array([a.positions for a in traj])
    frac = np.einsum("nia,ab->nib", pos - pos[0], np.linalg.inv(cell))
    reference = traj[0].copy()
    reference.positions = pos[0] + ((frac - np.round(frac)) @ cell).mean(0)
    born_ref = to_field_first(np.mean([a.arrays["born_charge"] for a in traj], axis=0), ref_order)
    dfpt = ase.io.read(source_file(dfpt_path), index=":", format="extxyz")
    target = reference.get_chemical_formula(mode="hill", empirical=True)
    quartz = [
        k for k, a in enumerate(dfpt) if a.get_chemical_formula(mode="hill", empirical=True) == target and len(a) == 9
    ]
    if not quartz:
        raise ValueError(f"no 9-atom {target} (alpha-quartz) frame in {dfpt_path}")
    corr = antisymmetric_correlation(
        [dfpt[k] for k in quartz], [dfpt[k].arrays["becs"].reshape(-1, 3, 3) for k in quartz], reference, born_ref
    )
    verdict = FIELD_FIRST if corr > 0 else DISPLACEMENT_FIRST
    return {
        "reference": os.path.basename(os.fspath(quartz_path)),
        "reference_polarization_fit": pol,
        "reference_order": ref_order,
        "dfpt_frames_compared": quartz,
        "antisymmetric_correlation_with_field_first_reference": corr,
        "dfpt_order": verdict,
        "agrees_with_SOURCE_CONVENTION": verdict == SOURCE_CONVENTION,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtsim.training.builders.dfpt", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="phonondb_bec_eps folder or its phonon_becs_epsilon.xyz")
    parser.add_argument("--out", required=True, help="output folder (train/val/test.extxyz, manifest.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument(
        "--group",
        choices=("structure", "formula"),
        default="structure",
        help="split unit: each structure, or all structures of one reduced formula together",
    )
    parser.add_argument(
        "--convention",
        choices=(FIELD_FIRST, DISPLACEMENT_FIRST),
        default=SOURCE_CONVENTION,
        help="index order of the input's becs (default: the checked order of the phonondb file)",
    )
    parser.add_argument(
        "--check-against",
        default=None,
        metavar="QUARTZ_XYZ",
        help="allegro_pol SiO2_alpha_quartz_201.xyz: re-run the index-order check, record it",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    manifest = build(
        args.data, args.out, args.seed, args.fractions, args.convention, args.group, args.check_against, args.quiet
    )
    check = manifest.get("convention_check")
    if check is not None and not check["agrees_with_SOURCE_CONVENTION"] and args.convention == SOURCE_CONVENTION:
        print(f"[dfpt] WARNING: the check finds the source order {check['dfpt_order']!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
