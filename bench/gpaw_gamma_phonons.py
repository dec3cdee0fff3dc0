"""Reference table: Γ-point TO frequencies by frozen phonons with GPAW, under the settings of the GPAW data set.

For each crystal (2 atoms in the primitive cell): the PBE lattice constant and the Γ TO frequency by
``frozen_phonon.gamma_to``, all on the k mesh the data set's rule gives the crystal at its starting lattice constant
(held fixed: a mesh that changes with the volume makes E(V) jump). The energy change to the next even mesh (two
more points per direction) is reported too: the size of the steps in the data set's energies where its rule
switches meshes. Experiments (room temperature, THz; cm⁻¹ / 33.356):
Si Raman 520 cm⁻¹; 3C-SiC TO 796 cm⁻¹; MgO TO 401 cm⁻¹; NaCl TO 164 cm⁻¹; zincblende GaN TO 555 cm⁻¹.

    python bench/gpaw_gamma_phonons.py [--out bench/gpaw_gamma_phonons.json]      # ~25 CPU minutes

Needs the ``dft`` extra. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import frozen_phonon
from ase.build import bulk

from mtsim.training.builders.dft import DFTSettings, kpoint_mesh, make_calculator
from mtsim.training.builders.dft_structures import LATTICE

EXPERIMENT_CM1 = {"Si": 520.0, "SiC": 796.0, "MgO": 401.0, "NaCl": 164.0, "GaN": 555.0}
CM1_PER_THZ = 33.35641


def gamma_to(name: str, settings: DFTSettings, displacement: float = 0.01) -> dict:
    lattice, guess = LATTICE[name]
    kpts = kpoint_mesh(bulk(name, lattice, a=guess), settings.kpoint_density)

    def evaluate(atoms, kpts=kpts):
        atoms = atoms.copy()
        atoms.calc = make_calculator(atoms, settings, kpts=kpts)
        return atoms.get_potential_energy(force_consistent=True), atoms.get_forces()

    row = frozen_phonon.gamma_to(name, lattice, guess, evaluate, displacement)
    start = bulk(name, lattice, a=guess)
    step = (evaluate(start, [k + 2 for k in kpts])[0] - row["energies_eV"][3]) / len(start)
    experiment = EXPERIMENT_CM1[name] / CM1_PER_THZ
    return {
        "crystal": name,
        "lattice": lattice,
        "a0_A": round(row["a0_A"], 4),
        "bulk_modulus_GPa": round(row["bulk_modulus_GPa"], 1),
        "force_constant_eV_A2": row["force_constant_eV_A2"],
        "to_THz": round(row["to_THz"], 3),
        "experiment_THz": round(experiment, 2),
        "deviation_percent": round(100 * (row["to_THz"] - experiment) / experiment, 1),
        "kpts": " ".join(map(str, kpts)),
        "kmesh_step_meV_per_atom": round(1000 * step, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/gpaw_gamma_phonons.json")
    parser.add_argument("--crystals", nargs="*", default=list(EXPERIMENT_CM1))
    args = parser.parse_args(argv)
    settings = DFTSettings(bader=False)
    rows = []
    print(
        "| crystal | a0 (Å) | B (GPa) | k mesh | E(k+2) − E(k) (meV/atom) | TO GPAW (THz) | TO exp. (THz) "
        "| GPAW − exp. |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.crystals:
        start = time.perf_counter()
        row = gamma_to(name, settings)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(
            f"| {name} ({row['lattice']}) | {row['a0_A']} | {row['bulk_modulus_GPa']} | {row['kpts']} | "
            f"{row['kmesh_step_meV_per_atom']} | "
            f"{row['to_THz']:.2f} | {row['experiment_THz']:.2f} | {row['deviation_percent']:+.1f} % |",
            flush=True,
        )
        with open(args.out, "w") as handle:
            json.dump({"settings": settings.__dict__, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
