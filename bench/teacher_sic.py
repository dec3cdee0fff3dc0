"""The CHGNet 0.3.0 teacher's own 3C-SiC: relaxed lattice constant and Gamma optical frequencies (4x4x4, no NAC).

    python bench/teacher_sic.py        (needs the teacher extra: pip install -e ".[teacher]")

Context for the student's numbers in bench/accuracy.py: same phonon engine (mtsim.phonon), the teacher's forces.
"""

from __future__ import annotations

import types

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from mtsim.phonon import Phonons
from mtsim.training.builders.teacher import load_teacher, teacher_calculator


class TeacherModel:
    """The teacher's forces behind the ``predict`` interface that mtsim.phonon uses."""

    def __init__(self):
        self.calculator = teacher_calculator(load_teacher())

    def predict(self, structures):
        out = []
        for s in structures:
            atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
            atoms.calc = self.calculator
            out.append(types.SimpleNamespace(forces=atoms.get_forces()))
        return out


def main() -> None:
    teacher = TeacherModel()
    sic = bulk("SiC", "zincblende", a=4.36)
    sic.calc = teacher.calculator
    FIRE(FrechetCellFilter(sic), logfile=None).run(fmax=0.005, steps=200)
    a = (4 * sic.get_volume()) ** (1 / 3)  # fcc primitive cell: V = a^3 / 4
    sic.calc = None
    phonons = Phonons.from_model(teacher, sic, (4, 4, 4), nac=False)
    optical = np.sort(phonons.frequencies([[0, 0, 0]])[0])[3:]
    print(
        f"CHGNet 0.3.0: a = {a:.4f} Å, Gamma optical modes without NAC (TO) = "
        f"{', '.join(f'{f:.2f}' for f in optical)} THz"
    )


if __name__ == "__main__":
    main()
