"""Reference: the ferroelectric soft mode of cubic BaTiO3 with GPAW, under the settings of the GPAW data set.

E(u) - E(0) along the P4mm displacement pattern (Ti +u along z, the O -u/2) in the cubic cell of a = 4.00 Å
(``frozen_phonon.soft_mode_scan``): a double well (negative values) means PBE puts P4mm below Pm-3m at this volume,
the sign the second-generation model must reproduce (``bench/accuracy.py``, section soft_mode).

    python bench/gpaw_batio3.py [--out bench/gpaw_batio3.json]      # ~10 CPU minutes

Needs the ``dft`` extra. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import frozen_phonon

from mtsim.training.builders.dft import DFTSettings, kpoint_mesh, make_calculator
from mtsim.training.builders.dft_structures import perovskite


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/gpaw_batio3.json")
    parser.add_argument("--a", type=float, default=4.0, help="cubic lattice constant (Å)")
    args = parser.parse_args(argv)
    settings = DFTSettings(bader=False)
    kpts = kpoint_mesh(perovskite(args.a), settings.kpoint_density)

    def evaluate(atoms):
        atoms = atoms.copy()
        atoms.calc = make_calculator(atoms, settings, kpts=kpts)
        energy = atoms.get_potential_energy(force_consistent=True)
        print(f"  u = {atoms.positions[1, 2] - 0.5 * args.a:.2f} Å: E = {energy:.5f} eV", file=sys.stderr, flush=True)
        return energy, atoms.get_forces()

    start = time.perf_counter()
    scan = frozen_phonon.soft_mode_scan(evaluate, args.a)
    scan.update(settings=settings.__dict__, kpts=" ".join(map(str, kpts)), seconds=round(time.perf_counter() - start))
    print("| u (Å) | E(u) − E(0) GPAW (meV/f.u.) |\n|---|---|")
    for u, e in zip(scan["amplitudes_A"], scan["energy_meV"]):
        print(f"| {u:.2f} | {e:+.1f} |")
    with open(args.out, "w") as handle:
        json.dump(scan, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
