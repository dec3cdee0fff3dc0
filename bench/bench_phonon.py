"""Full phonon workflow, mtsim.phonon vs phonopy + the mtsim ASE calculator, on the same model in the same run.

Workflow for each: symmetry-reduced displacements of a 4x4x4 supercell, forces, force constants (symmetrised),
NAC (Gonze-Lee) from the model's Z* and eps_inf, band structure (same path), DOS and thermal properties on a
20x20x20 mesh. Each run is a fresh process (spawned), so the peak RSS printed is that side's alone; the two sides
alternate ``--repeats`` times, and the table gives medians (min-max) and the ratio of the medians.

    python bench/bench_phonon.py                    # analytic PairModel (tests/analytic.py)
    python bench/bench_phonon.py --model mtsim-1M.float32.onnx --mesh 20 20 20 --repeats 3

Needs phonopy (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

CHARGES = {14: 2.7, 6: -2.7, 56: 2.7, 22: 7.2, 8: -3.3}
"""Rigid-ion Z* of the analytic stand-in model (neutral in SiC and BaTiO3)."""


def structures() -> dict[str, Atoms]:
    sic = bulk("SiC", "zincblende", a=4.377)
    bto = Atoms(
        "BaTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.514], [0.5, 0.5, 0.975], [0.5, 0, 0.485], [0, 0.5, 0.485]],
        cell=np.diag([3.992, 3.992, 4.036]),
        pbc=True,
    )
    return {"3C-SiC": sic, "BaTiO3 (P4mm)": bto}


def load(model_path):
    if model_path is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from analytic import PairModel

        return PairModel(charges=CHARGES, r0=2.0, dielectric=np.eye(3) * 6.0)
    import mtsim

    return mtsim.load(model_path)


def run_mtsim(model_path, atoms, size, mesh):
    from mtsim.phonon import Phonons

    model = load(model_path)
    start = time.perf_counter()
    ph = Phonons.from_model(model, atoms, size, nac=True)
    bands = ph.band_structure()
    sampled = ph.mesh(mesh)
    ph.density_of_states(sampled)
    ph.thermal_properties(np.arange(0, 1001, 10.0), sampled)
    return time.perf_counter() - start, np.concatenate(bands.frequencies)


def run_phonopy(model_path, atoms, size, mesh):
    import phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    import mtsim
    from mtsim.phonon.bands import band_path
    from mtsim.structure import Structure
    from mtsim.units import COULOMB_EV_A

    model = load(model_path)
    start = time.perf_counter()
    calc = mtsim.Calculator(model=model, include_untrained=True)  # timing only: any model will do
    unit = PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(), cell=atoms.cell[:], positions=atoms.positions, masses=atoms.get_masses()
    )
    ph = phonopy.Phonopy(unit, supercell_matrix=np.diag(size), primitive_matrix="P")
    ph.generate_displacements(distance=0.01)
    forces = []
    for cell in ph.supercells_with_displacements:
        supercell = Atoms(cell.symbols, cell=cell.cell, positions=cell.positions, pbc=True)
        supercell.calc = calc
        forces.append(supercell.get_forces())
    ph.forces = forces
    ph.produce_force_constants()
    ph.symmetrize_force_constants()
    primitive = atoms.copy()
    primitive.calc = calc
    ph.nac_params = {
        "born": calc.get_property("born_charges", primitive),
        "dielectric": calc.get_property("dielectric", primitive),
        "factor": COULOMB_EV_A,
    }
    segments, _ = band_path(Structure.from_atoms(atoms))
    ph.run_band_structure(segments, with_eigenvectors=False, labels=None)
    ph.run_mesh(list(mesh), is_gamma_center=True)
    ph.run_total_dos()
    ph.run_thermal_properties(t_min=0, t_max=1000, t_step=10)
    return time.perf_counter() - start, np.concatenate(ph.band_structure.frequencies)


def child(which, model_path, atoms, size, mesh):
    elapsed, frequencies = (run_mtsim if which == "mtsim" else run_phonopy)(model_path, atoms, size, mesh)
    return elapsed, frequencies, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(which, model_path, atoms, size, mesh):
    """(seconds, band frequencies, peak RSS MiB) of one side, run in a fresh process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(child, which, model_path, atoms, size, mesh).result()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="ONNX model file (default: the analytic PairModel)")
    parser.add_argument("--supercell", nargs=3, type=int, default=(4, 4, 4))
    parser.add_argument("--mesh", nargs=3, type=int, default=(20, 20, 20))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (alternating)")
    args = parser.parse_args()
    print(
        f"model: {args.model or 'analytic PairModel'}; supercell {args.supercell}; mesh {args.mesh}; NAC on; "
        f"{args.repeats} run(s) per side"
    )
    print(
        f"{'system':<15}{'mtsim s':>22}{'phonopy+ASE s':>22}{'speed-up':>10}{'mtsim MiB':>11}"
        f"{'phonopy MiB':>13}{'max |df| THz':>14}"
    )
    for name, atoms in structures().items():
        runs = {"mtsim": [], "phonopy": []}
        for k in range(args.repeats):
            for which in ("mtsim", "phonopy") if k % 2 == 0 else ("phonopy", "mtsim"):
                runs[which].append(measure(which, args.model, atoms, tuple(args.supercell), tuple(args.mesh)))
        times = {which: [run[0] for run in r] for which, r in runs.items()}
        median = {which: statistics.median(t) for which, t in times.items()}
        cells = {which: f"{median[which]:.2f} ({min(t):.2f}-{max(t):.2f})" for which, t in times.items()}
        df = max(np.abs(a[1] - b[1]).max() for a, b in zip(runs["mtsim"], runs["phonopy"]))
        print(
            f"{name:<15}{cells['mtsim']:>22}{cells['phonopy']:>22}{median['phonopy'] / median['mtsim']:>9.2f}x"
            f"{max(r[2] for r in runs['mtsim']):>11.0f}{max(r[2] for r in runs['phonopy']):>13.0f}{df:>14.2e}"
        )


if __name__ == "__main__":
    main()
