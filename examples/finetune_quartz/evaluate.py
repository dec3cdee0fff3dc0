"""Test-split errors of mtsim models on allegro-pol frames (built by run.sh): before and after fine-tuning.

    python evaluate.py data/test.extxyz MODEL.onnx [MODEL.onnx ...]

Per model: relative energy (E minus the set's mean, per atom; QE total energies and the bundled model's energies
sit on different references), forces (eV/Å), stress (GPa), Z* (e) and eps_inf MAEs over all components.
"""

import os
import sys

import ase.io
import numpy as np

import mtsim
from mtsim.units import GPA


def errors(model: mtsim.Model, frames) -> dict[str, float]:
    predictions = model.predict(frames)
    n = np.array([len(a) for a in frames])
    e_ref = np.array([a.info["energy"] for a in frames]) / n
    e_out = np.array([p.energy for p in predictions]) / n

    def mae(pairs):
        return float(np.mean(np.concatenate([np.abs(np.ravel(a) - np.ravel(b)) for a, b in pairs])))

    return {
        "rel. energy (meV/atom)": 1e3 * float(np.mean(np.abs((e_out - e_out.mean()) - (e_ref - e_ref.mean())))),
        "forces (eV/Å)": mae((p.forces, a.arrays["forces"]) for p, a in zip(predictions, frames)),
        "stress (GPa)": mae(
            (p.stress / GPA, np.reshape(a.info["stress"], (3, 3)) / GPA) for p, a in zip(predictions, frames)
        ),
        "Z* (e)": mae(
            (p.born_charges, np.reshape(a.arrays["born_charges"], (-1, 3, 3))) for p, a in zip(predictions, frames)
        ),
        "eps_inf": mae((p.dielectric, np.reshape(a.info["dielectric"], (3, 3))) for p, a in zip(predictions, frames)),
    }


def main() -> None:
    frames = ase.io.read(sys.argv[1], index=":")
    for frame in frames:  # labels read from info/arrays; no calculator results wanted here
        if frame.calc is not None:
            frame.info["energy"] = frame.get_potential_energy()
            frame.arrays["forces"] = frame.get_forces()
            frame.info["stress"] = frame.get_stress(voigt=False).reshape(9)
            frame.calc = None
    table = {path: errors(mtsim.load(path, device="cpu"), frames) for path in sys.argv[2:]}
    names = list(next(iter(table.values())))
    print(f"{len(frames)} test frames of {sys.argv[1]}")
    print(f"{'model':<32}" + "".join(f"{name:>24}" for name in names))
    for path, row in table.items():
        print(f"{os.path.basename(path):<32}" + "".join(f"{row[name]:>24.3f}" for name in names))


if __name__ == "__main__":
    main()
