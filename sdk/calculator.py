"""ASE calculator on an mtsim model: works with ASE's optimizers, MD, phonopy-through-ASE, etc."""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as _ASECalculator
from ase.calculators.calculator import all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mtsim.model import Model, load


class Calculator(_ASECalculator):
    """``mtsim.Calculator(model=None, include_untrained=False, **load_kwargs)``: ``model`` is a ``mtsim.Model``, a
    model file, or None for the bundled default; ``load_kwargs`` go to ``mtsim.load`` (device, precision, threads).
    Outputs the model marks untrained (``Model.untrained_outputs``, e.g. the bundled model's charges) are not
    results (ASE raises ``PropertyNotImplementedError``) unless ``include_untrained`` is set.

    Results in ASE units: energy/free_energy (eV), forces (eV/Å), stress (eV/Å^3, Voigt; only for cells with a
    volume), magmoms (μB) and magmom (their sum), charges (e), born_charges [n,3,3] (e), dielectric [3,3].
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "magmoms",
        "magmom",
        "charges",
        "born_charges",
        "dielectric",
    ]

    def __init__(self, model: Model | str | None = None, include_untrained: bool = False, **load_kwargs):
        super().__init__()
        self.model = model if isinstance(model, Model) or hasattr(model, "predict") else load(model, **load_kwargs)
        untrained = set(() if include_untrained else getattr(self.model, "untrained_outputs", ()))
        untrained |= {alias for name, alias in (("energy", "free_energy"), ("magmoms", "magmom")) if name in untrained}
        self.implemented_properties = [p for p in type(self).implemented_properties if p not in untrained]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        p = self.model.predict(self.atoms)
        self.results = {
            "energy": p.energy,
            "free_energy": p.energy,
            "forces": np.array(p.forces, dtype=float),
            "magmoms": np.array(p.magmoms, dtype=float),
            "magmom": float(np.sum(p.magmoms)),
            "charges": np.array(p.charges, dtype=float),
            "born_charges": np.array(p.born_charges, dtype=float),
            "dielectric": np.array(p.dielectric, dtype=float),
        }
        if self.atoms.cell.rank == 3:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.array(p.stress, dtype=float))
        self.results = {k: v for k, v in self.results.items() if k in self.implemented_properties}
