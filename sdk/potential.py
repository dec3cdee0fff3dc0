"""What the engines need from a model (:class:`Potential`), and the adapter that evaluates one on a reused skin
neighbour list and fills an MD state (:class:`ModelPotential`).

MD (:mod:`mtsim.md`), relaxation (:mod:`mtsim.relax`), field MD and hysteresis (:mod:`mtsim.field_md`) go through
:class:`ModelPotential`; phonons (:mod:`mtsim.phonon`), the ASE calculator and the i-PI driver (:mod:`mtsim.ipi`)
call :meth:`Potential.predict`. ``mtsim.Model`` is a :class:`Potential`; so is any object with the same members
(the analytic models of the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from mtsim.field import ElectricField, PolarizationTracker, as_field, field_forces
from mtsim.graph import MIN_DISTANCE, first_overlap, graph_inputs
from mtsim.kernels import NeighborList
from mtsim.model import check_elements, split_outputs

if TYPE_CHECKING:
    from mtsim.md.state import MDState
    from mtsim.model import Prediction

MAX_FORCE = 500.0
"""eV/Å. A force above this (or a NaN) stops the run: the dynamics has exploded."""
DEFAULT_SKIN = 0.5
"""Å. Neighbour-list skin: pairs within cutoff + skin are kept until some atom may have crossed it."""


@runtime_checkable
class Potential(Protocol):
    """A model as the engines use it.

    ``cutoff`` (Å); ``dtype``: float type of the inputs it takes; ``elements``: the atomic numbers it supports;
    ``evaluate(inputs)``: the batched outputs (``mtsim.onnx_format.OUTPUT_NAMES``) for inputs in the
    ``mtsim.graph.build_graph`` layout; ``predict(structures, batch_size=, allow_overlap=)``: one
    ``mtsim.Prediction`` per structure (one, or a list for a list).
    """

    cutoff: float
    dtype: np.dtype
    elements: Sequence[int]

    def evaluate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def predict(
        self, structures, *, batch_size: int | None = None, allow_overlap: bool = False
    ) -> Prediction | list[Prediction]: ...


class MDError(RuntimeError):
    """The dynamics broke down (NaN or exploding forces, overlapping atoms); the message names step and atom."""


class ModelPotential:
    """A :class:`Potential` on a reused ``mtsim.kernels.NeighborList`` (with ``skin`` Å), plus an optional electric
    field; fills an :class:`mtsim.md.MDState`.

    ``field``: None, a constant vector (V/Å), a callable ``t_fs -> vector`` or an :class:`mtsim.field.ElectricField`.
    ``max_force`` (eV/Å): larger forces (or NaN) raise :class:`MDError` naming the step and the atom.
    """

    def __init__(self, model: Potential, skin: float = DEFAULT_SKIN, field=None, max_force: float = MAX_FORCE):
        self.model = model
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff = float(model.cutoff)
        self.neighbors = NeighborList(self.cutoff, skin)
        self.field: ElectricField | None = as_field(field)
        self.max_force = float(max_force)
        self.tracker = PolarizationTracker()
        self.dtype = np.dtype(model.dtype)
        self.evaluations = 0

    def compute(self, state: MDState) -> None:
        """Evaluate every output at the state's positions and cell; update forces, dipole and field terms."""
        if self.evaluations == 0:
            check_elements(state.numbers, self.model.elements)
        self._check_positions(state)
        i, j, S, _, d = self.edges(state)
        self._check_distances(state, i, j, S, d)
        inputs = graph_inputs(state.numbers, state.positions, state.cell, i, j, S, self.dtype)
        out = split_outputs(self.model.evaluate(inputs), [state.n_atoms])[0]
        self.evaluations += 1
        outputs = {name: np.array(value, dtype=np.float64) for name, value in out.items()}
        forces = outputs["forces"].copy()
        dipole = self.tracker.update(state.positions, outputs["born_charges"])
        if self.field is not None:
            e_new = np.asarray(self.field(state.time), dtype=float)
            # trapezoid rule for ∫ D·dE, so that K + U − E·D + ∫ D·dE is conserved for any E(t)
            state.field_work += float(0.5 * (state.dipole + dipole) @ (e_new - state.field))
            state.field = e_new
            forces += field_forces(outputs["born_charges"], e_new)
        state.dipole = dipole
        state.energy = float(outputs["energy"])
        state.forces = forces
        state.stress = outputs["stress"]
        state.outputs = outputs
        self._check_forces(state)

    def edges(self, state: MDState):
        """(i, j, shifts, vectors, distances) of the pairs within the cutoff (self edges included), from the skin
        list, which is rebuilt only when needed."""
        self.neighbors.update(state.positions, state.cell, state.pbc)
        i, j, S = self.neighbors.get()
        S = S.astype(np.float64)
        r = state.positions[j] - state.positions[i] + S @ state.cell
        d = np.sqrt(np.einsum("ij,ij->i", r, r))
        inside = d < self.cutoff
        return i[inside], j[inside], S[inside], r[inside], d[inside]

    def start_field(self, state: MDState) -> None:
        """Set the field at the state's time without counting work (before the first step)."""
        if self.field is not None:
            state.field = np.asarray(self.field(state.time), dtype=float)

    def remove_atoms(self, keep: np.ndarray) -> None:
        self.neighbors.remove(keep)
        self.tracker.remove(keep)

    # -------------------------------------------------------------------------------------- checks
    @staticmethod
    def _label(state, atom) -> str:
        from ase.data import chemical_symbols

        return f"atom {atom} ({chemical_symbols[state.numbers[atom]]})"

    def _check_positions(self, state):
        bad = ~np.isfinite(state.positions).all(axis=1)
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            raise MDError(f"step {state.step}: non-finite position on {self._label(state, atom)}")
        if not np.isfinite(state.cell).all():
            raise MDError(f"step {state.step}: the cell became non-finite")

    def _check_distances(self, state, i, j, S, d):
        k = first_overlap(i, j, S, d)
        if k is not None:
            raise MDError(
                f"step {state.step}: {self._label(state, i[k])} and {self._label(state, j[k])} are "
                f"{d[k]:.3g} Å apart (below {MIN_DISTANCE} Å); the dynamics has exploded"
            )

    def _check_forces(self, state):
        norms = np.linalg.norm(state.forces, axis=1)
        bad = ~np.isfinite(norms)
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            raise MDError(f"step {state.step}: NaN or infinite force on {self._label(state, atom)}")
        if not math.isfinite(state.energy):
            raise MDError(f"step {state.step}: the energy is NaN or infinite")
        atom = int(np.argmax(norms)) if len(norms) else 0
        if len(norms) and norms[atom] > self.max_force:
            raise MDError(
                f"step {state.step}: exploding force on {self._label(state, atom)}: "
                f"|F| = {norms[atom]:.4g} eV/Å > {self.max_force:g} eV/Å"
            )
