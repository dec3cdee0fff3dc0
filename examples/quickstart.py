"""Quick start: the bundled model through the torch-free runtime, then the conversion path for your own models.

1. ``mtsim info``: what the bundled model is (heads, units, training data, untrained outputs).
2. ``mtsim predict``: every head for a few crystals and a molecule.
3. Python: relax 3C-SiC with its cell, then its Born charges, eps_inf and LO-TO splitting at Gamma.
4. ``mtsim convert``: export the checkpoint the bundled model came from to a validated ONNX file (what you do with
   a checkpoint you trained yourself; needs the ``train`` extra).

Everything is written to ``quickstart/`` (or the folder given as the first argument). About two minutes on 2 cores.
"""

import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk, molecule

import mtsim
from mtsim.model import DEFAULT_MODEL, MODELS_DIR
from mtsim.phonon import Phonons
from mtsim.relax import relax


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def silicon_carbide() -> None:
    model = mtsim.load(device="cpu")
    result = relax(model, bulk("SiC", "zincblende", a=4.36), fmax=0.01, cell=True)
    sic = result.structure
    p = model.predict(sic)
    phonons = Phonons.from_model(model, sic, (4, 4, 4), nac=True)  # holds the 5 Å cutoff sphere
    along_x = sic.cell @ np.array([1.0, 0.0, 0.0])  # reduced coordinates of the Cartesian x direction
    gamma = np.sort(phonons.frequencies([0, 0, 0], q_direction=along_x)[0])
    print(
        f"3C-SiC: a = {(4 * sic.volume) ** (1 / 3):.3f} Å (exp. 4.360), Z*_Si,xx = "
        f"{p.born_charges[sic.numbers == 14][0, 0, 0]:.2f} e (exp. 2.70), eps_inf = {p.dielectric[0, 0]:.2f} "
        f"(exp. 6.52), TO = {gamma[3]:.2f} THz, LO = {gamma[5]:.2f} THz (exp. 23.87, 29.16)"
    )


def main(folder: str = "quickstart") -> None:
    out = Path(folder)
    out.mkdir(exist_ok=True)
    structures = out / "structures.extxyz"
    frames = [
        bulk("MgO", "rocksalt", a=4.21),
        bulk("ZnO", "wurtzite", a=3.25, c=5.21),
        bulk("Si", "diamond", a=5.43) * (2, 2, 2),
        molecule("H2O"),
    ]
    ase.io.write(structures, frames, format="extxyz")

    run("mtsim", "info")
    run("mtsim", "predict", str(structures), "--device", "cpu", "-o", str(out / "predictions.extxyz"))
    silicon_carbide()
    run("mtsim", "convert", str(MODELS_DIR / f"{DEFAULT_MODEL}.pt"), "-o", str(out / "converted.float32.onnx"))


if __name__ == "__main__":
    main(*sys.argv[1:])
