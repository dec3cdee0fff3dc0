"""Molecular dynamics on an mtsim model, plain numpy (no ASE in the loop).

- :mod:`mtsim.md.state` — :class:`MDState` (positions, momenta, cell, the last model outputs, field terms),
  :func:`maxwell_boltzmann`, :func:`zero_momentum`, :func:`wrap_positions`.
- :mod:`mtsim.md.integrators` — :class:`NVE`, :class:`Langevin`, :class:`NoseHooverChain`, :class:`NPT` and
  :func:`make_integrator` for the names in :data:`ENSEMBLES`.
- :mod:`mtsim.md.simulation` — :class:`Simulation` (the loop, logging, trajectories, hooks), the atom-removal event
  :class:`RemoveAtoms` and the one-call front end :func:`run`.
- :mod:`mtsim.md.restart` — restart files (:func:`write_restart`, :func:`read_restart`, :class:`RestartError`):
  ``Simulation(..., restart=FILE)`` continues a run bitwise.
- The model is evaluated through :class:`mtsim.potential.ModelPotential` (re-exported here with :class:`MDError`).

Units: time in fs, temperature in K, pressure in GPa, electric field in V/Å (everything else ASE's: Å, eV, amu,
e). Momenta are in amu·Å/t with t the ASE time unit (``mtsim.units.FS`` per fs), as in ASE.

In an electric field E(t) (:mod:`mtsim.field`) the force is F_i = F_i^0 + Z*_i^T E and the dipole
D = Ω P is integrated along the unwrapped trajectory; every conserved quantity then contains the electric
enthalpy term −E·D plus ∫ D·dE (zero at constant field), so it stays conserved for any E(t).
"""

from mtsim.md.integrators import ENSEMBLES, NPT, NVE, SUZUKI_YOSHIDA, Langevin, NoseHooverChain, exprel, make_integrator
from mtsim.md.restart import RestartError, read_restart, write_restart
from mtsim.md.simulation import MAX_DRIFT, MAX_TEMPERATURE_FACTOR, Hook, RemoveAtoms, Simulation, run
from mtsim.md.state import MDState, maxwell_boltzmann, wrap_positions, zero_momentum
from mtsim.potential import DEFAULT_SKIN, MAX_FORCE, MDError, ModelPotential

__all__ = [
    "DEFAULT_SKIN",
    "ENSEMBLES",
    "MAX_DRIFT",
    "MAX_FORCE",
    "MAX_TEMPERATURE_FACTOR",
    "NPT",
    "NVE",
    "SUZUKI_YOSHIDA",
    "Hook",
    "Langevin",
    "MDError",
    "MDState",
    "ModelPotential",
    "NoseHooverChain",
    "RemoveAtoms",
    "RestartError",
    "Simulation",
    "exprel",
    "make_integrator",
    "maxwell_boltzmann",
    "read_restart",
    "run",
    "wrap_positions",
    "write_restart",
    "zero_momentum",
]
