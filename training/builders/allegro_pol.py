"""Finite-field DFT frames of allegro-pol (alpha-quartz, BaTiO3) in the training layout, for fine-tuning examples.

Input: ``SiO2_alpha_quartz_201.xyz`` or ``BaTiO3_full73.xyz`` of ``shared/data/allegro_pol`` (Quantum ESPRESSO,
PBE, Berry-phase finite fields; Falletta et al. 2025). Output, in ``--out``: ``train.extxyz``, ``val.extxyz``,
``test.extxyz`` and ``manifest.json`` (source sha256, the frames of each split), with the labels under the keys the
training package reads first:

- ``energy`` (eV; the file's ``total_energy``: a QE total energy, on another reference than any MPtrj model),
  ``forces`` (eV/Å), ``stress`` (eV/Å³, ASE sign: negative under tension);
- ``born_charges`` (e, 9 numbers per atom, field index first: the file's ``born_charge`` as it stands, see the
  convention check in :mod:`mtsim.training.builders.dfpt`);
- ``dielectric``: eps_inf = 1 + polarizability / (eps0 V), with the file's ``polarizability`` (dP/dE of the cell,
  e Å²/V) and eps0 = 5.5263499562e-3 e/(V Å).

The frames are consecutive snapshots of one trajectory, so a random split would put near copies of a test frame into
training: the split is by blocks in file order (first ``train`` fraction, then val, then test).
"""

from __future__ import annotations

import argparse
import os
import sys

import ase
import ase.io
import numpy as np

from mtsim.training.builders._io import write_frames, write_manifest
from mtsim.training.checkpoint import file_sha256

EPSILON_0 = 5.5263499562e-3
"""Vacuum permittivity, e/(V Å)."""
SPLITS = ("train", "val", "test")


def convert_frame(atoms: ase.Atoms, index: int) -> ase.Atoms:
    """One allegro-pol frame with the labels named and in the units of the training layout."""
    missing = [key for key in ("total_energy", "polarizability") if key not in atoms.info]
    missing += [key for key in ("born_charge",) if key not in atoms.arrays]
    if missing or atoms.calc is None:
        raise ValueError(f"frame {index}: not an allegro-pol frame (missing {missing or ['forces/stress']})")
    volume = atoms.get_volume()
    polarizability = np.asarray(atoms.info["polarizability"], dtype=np.float64).reshape(3, 3)
    out = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    out.info["energy"] = float(atoms.info["total_energy"])
    out.arrays["forces"] = atoms.get_forces()
    out.info["stress"] = atoms.get_stress(voigt=False).reshape(9)
    out.arrays["born_charges"] = np.asarray(atoms.arrays["born_charge"], dtype=np.float64).reshape(len(out), 9)
    out.info["dielectric"] = (np.eye(3) + polarizability / (EPSILON_0 * volume)).reshape(9)
    out.info["source_index"] = int(index)
    return out


def block_split(count: int, fractions=(0.75, 0.125, 0.125)) -> dict[str, range]:
    """Frame indices of each split: contiguous blocks in file order."""
    num_train = int(round(fractions[0] * count))
    num_val = int(round(fractions[1] * count))
    return {
        "train": range(0, num_train),
        "val": range(num_train, num_train + num_val),
        "test": range(num_train + num_val, count),
    }


def build(source: str | os.PathLike, out: str | os.PathLike, fractions=(0.75, 0.125, 0.125)) -> dict:
    """Convert ``source`` and write the three splits and the manifest into ``out``; returns the manifest."""
    frames = [convert_frame(atoms, k) for k, atoms in enumerate(ase.io.read(source, index=":", format="extxyz"))]
    splits = block_split(len(frames), fractions)
    for name, indices in splits.items():
        write_frames(os.path.join(out, f"{name}.extxyz"), [frames[k] for k in indices])
    manifest = {
        "builder": "mtsim.training.builders.allegro_pol",
        "source": os.path.basename(source),
        "source_sha256": file_sha256(source),
        "frames": len(frames),
        "splits": {name: [indices.start, indices.stop] for name, indices in splits.items()},
    }
    write_manifest(os.path.join(out, "manifest.json"), manifest)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an allegro-pol .xyz file")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    manifest = build(args.data, args.out)
    sizes = {name: stop - start for name, (start, stop) in manifest["splits"].items()}
    print(f"{manifest['frames']} frames of {manifest['source']} -> {args.out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
