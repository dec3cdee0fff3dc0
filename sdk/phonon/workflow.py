"""Model-driven workflows: relaxation before phonons, and the quasi-harmonic approximation (paper S4.3.1).

``mtsim.relax`` is imported inside the functions, so the phonon modules load without it.
"""

from __future__ import annotations

import warnings

import numpy as np

from mtsim.phonon.nac import NACChoice, choose_nac
from mtsim.phonon.phonons import Phonons
from mtsim.phonon.qha import QHA
from mtsim.progress import progress
from mtsim.structure import Structure, as_structure


def relax_structure(
    model, structure, fmax: float = 0.02, cell: bool = True, pressure: float = 0.0, max_steps: int = 500
) -> tuple[Structure, float]:
    """``mtsim.relax.relax`` (positions, and the cell at ``pressure`` GPa when ``cell``); returns the structure and
    its energy (eV), warning when the relaxation did not converge."""
    from mtsim.relax import relax

    result = relax(model, structure, fmax=fmax, cell=cell, pressure=pressure, max_steps=max_steps)
    if not result.converged:
        warnings.warn(f"relaxation did not converge to fmax={fmax} eV/Å in {result.steps} steps", stacklevel=2)
    return result.structure, result.energy


def nac_choice(model, structure, nac: bool | str = "auto", metallic: bool = False) -> NACChoice:
    """``choose_nac`` for ``structure`` with the model's eps_inf on it."""
    structure = as_structure(structure)
    return choose_nac(structure.numbers, model.predict(structure).dielectric, nac, metallic)


def scaled(structure: Structure, volume_factor: float) -> Structure:
    """``structure`` with its volume multiplied by ``volume_factor`` (isotropic, fractional coordinates kept)."""
    s = volume_factor ** (1 / 3)
    return Structure(structure.numbers, structure.positions * s, structure.cell * s, structure.pbc)


def quasi_harmonic(
    model,
    structure,
    supercell=(4, 4, 4),
    temperatures=np.arange(0, 1001, 10),
    mesh=(20, 20, 20),
    volume_range: float = 0.025,
    n_volumes: int = 11,
    fmax: float = 0.02,
    nac: bool | str = "auto",
    nac_method: str = "gonze",
    amplitude: float = 0.01,
    eos: str = "vinet",
    progress_bar: bool = False,
    metallic: bool = False,
    allow_small_supercell: bool = False,
) -> QHA:
    """QHA of ``structure`` (relaxed beforehand by the caller): ``n_volumes`` volumes from 1 - ``volume_range`` to
    1 + ``volume_range`` times its own, atoms relaxed to ``fmax`` eV/Å at each fixed cell, harmonic phonons on
    ``mesh``, and F(V) fitted with ``eos`` at each temperature (K). ``nac="auto"`` is decided once, on
    ``structure`` (``nac_choice``), and ``allow_small_supercell`` as in ``Phonons.calculate_force_constants``."""
    structure = as_structure(structure)
    if nac == "auto" or metallic:
        nac = nac_choice(model, structure, nac, metallic).applied
    volumes, energies, free = [], [], []
    factors = np.linspace(1 - volume_range, 1 + volume_range, n_volumes)
    with progress(factors, f"QHA over {n_volumes} volumes", progress_bar) as bar:
        for factor in bar:
            relaxed, energy = relax_structure(model, scaled(structure, factor), fmax=fmax, cell=False)
            phonons = Phonons.from_model(
                model,
                relaxed,
                supercell,
                nac=nac,
                nac_method=nac_method,
                amplitude=amplitude,
                allow_small_supercell=allow_small_supercell,
            )
            volumes.append(relaxed.volume)
            energies.append(energy)
            free.append(phonons.thermal_properties(temperatures, phonons.mesh(mesh)).free_energy)
    return QHA(volumes, energies, temperatures, np.array(free).T, eos)
