"""Reference: the Born effective charge of Si in 3C-SiC with GPAW, under the settings of the GPAW data set.

Z*_Si,xx (e) by Berry phases (``gpaw.berryphase.polarization_phase``, as ``gpaw.borncharges`` does it): Si moved
by ±0.01 Å along x, the polarization's change times the cell volume over the displacement, at several lattice
constants a (Å). The model's Z* is trained on DFPT at one cell per crystal (3C-SiC: a = 4.358 Å), its LO–TO
splitting is measured at its own relaxed cell (PBE: 4.390 Å); this table is Z* between the two
(``bench/accuracy.py``, section sic, interpolates it at the model's a). Symmetry off (Berry phases need the full
k mesh); the data set's cut-off, smearing and k rule otherwise. Scans already in ``--out`` are kept, so an
interrupted run resumes.

    python bench/gpaw_born_charges.py [--out bench/gpaw_born_charges.json]      # ~1 CPU minute per lattice constant

Needs the ``dft`` extra. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time

import numpy as np
from ase.build import bulk

from mtsim.training.builders.dft import DFTSettings, kpoint_mesh

DISPLACEMENT = 0.01
"""Å, of Si along x, each way."""


def born_charge_si(a: float, settings: DFTSettings) -> dict:
    """Z*_Si[:, x] (e; field index first, as phonopy) of 3C-SiC at lattice constant ``a`` (Å)."""
    from gpaw import GPAW, PW, FermiDirac
    from gpaw.berryphase import polarization_phase

    kpts = kpoint_mesh(bulk("SiC", "zincblende", a=a), settings.kpoint_density)
    phases = {}
    for sign in (1, -1):
        atoms = bulk("SiC", "zincblende", a=a)  # Si at the origin
        atoms.positions[0, 0] += sign * DISPLACEMENT
        atoms.calc = GPAW(
            mode=PW(settings.ecut),
            xc=settings.xc,
            kpts={"size": kpts},
            occupations=FermiDirac(settings.smearing),
            convergence={"energy": settings.energy_tol, "density": settings.density_tol},
            symmetry="off",
            txt=None,
        )
        atoms.get_potential_energy()
        with contextlib.redirect_stdout(io.StringIO()):  # the Berry-phase step prints GPAW's banner
            phases[sign] = polarization_phase(calc=atoms.calc)["phase_c"]
    change = phases[1] - phases[-1]
    change -= 2 * np.pi * np.round(change / (2 * np.pi))  # phases are defined modulo 2π
    # P = e / (2π Ω) Σ_c φ_c a_c, so Z*[:, x] = Ω dP / du_x = Σ_c Δφ_c a_c / (2π Δu)
    z = change @ atoms.cell.array / (2 * np.pi * 2 * DISPLACEMENT)
    return {"a_A": a, "z_si_x": z.tolist(), "kpts": " ".join(map(str, kpts))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/gpaw_born_charges.json")
    parser.add_argument("--a", type=float, nargs="+", default=[4.33, 4.358, 4.39, 4.42], help="lattice constants (Å)")
    args = parser.parse_args(argv)
    settings = DFTSettings(bader=False)
    saved = json.load(open(args.out)) if os.path.exists(args.out) else {}
    points = saved["points"] if saved.get("settings") == settings.__dict__ else []  # resume only the same settings
    for a in args.a:
        if any(abs(point["a_A"] - a) < 1e-9 for point in points):
            continue
        start = time.perf_counter()
        point = born_charge_si(a, settings)
        point["seconds"] = round(time.perf_counter() - start)
        points = sorted([*points, point], key=lambda p: p["a_A"])
        with open(args.out, "w") as handle:
            json.dump(
                {"settings": settings.__dict__, "displacement_A": DISPLACEMENT, "points": points}, handle, indent=1
            )
    print("| a (Å) | Z*_Si,xx (e) | k mesh |\n|---|---|---|")
    for point in points:
        print(f"| {point['a_A']} | {point['z_si_x'][0]:.3f} | {point['kpts']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
