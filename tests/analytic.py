"""Analytic stand-ins for ``mtsim.Model`` used to test the engines against known answers.

``PairModel`` is a smooth-cutoff Morse pair potential with rigid-ion Born charges ``Z_i = q_i I`` and a constant
dielectric tensor. It implements the same interface as ``mtsim.Model`` (``predict``, ``evaluate``, ``cutoff``,
``dtype``, ``elements``), so engines cannot tell the difference.
"""

from __future__ import annotations

import numpy as np

from mtsim.graph import build_graph, edge_vectors
from mtsim.model import Prediction, split_outputs
from mtsim.structure import as_structure


def smooth_cutoff(d, cutoff):
    """The model's cutoff polynomial m(d) and its derivative dm/dd."""
    x = np.clip(d / cutoff, 0.0, 1.0)
    m = 1 - 6 * x**5 + 15 * x**4 - 10 * x**3
    dm = (-30 * x**4 + 60 * x**3 - 30 * x**2) / cutoff
    return np.where(x < 1, m, 0.0), np.where(x < 1, dm, 0.0)


class PairModel:
    """Morse pair potential phi(d) = D [(1 - exp(-a (d - r0)))^2 - 1] m(d), Born charges q_Z I, eps_inf const.

    ``charges``: dict atomic number -> rigid-ion charge (e); unlisted elements carry 0.
    """

    precision = "float64"
    dtype = np.dtype(np.float64)
    device = "cpu"

    def __init__(self, depth=0.5, stiffness=1.5, r0=2.5, cutoff=5.0, charges=None, dielectric=None):
        self.depth, self.stiffness, self.r0, self.cutoff = depth, stiffness, r0, cutoff
        self.charges = dict(charges or {})
        self.dielectric = np.eye(3) * 2.5 if dielectric is None else np.asarray(dielectric, dtype=float)
        self.elements = tuple(range(1, 95))
        self.metadata = {"model_name": "analytic-morse", "precision": "float64", "cutoff": str(cutoff)}
        self.calls = 0

    def pair(self, d):
        """phi(d) in eV and dphi/dd in eV/Å."""
        m, dm = smooth_cutoff(d, self.cutoff)
        g = np.exp(-self.stiffness * (d - self.r0))
        v = self.depth * ((1 - g) ** 2 - 1)
        dv = self.depth * 2 * (1 - g) * self.stiffness * g
        return v * m, dv * m + v * dm

    def evaluate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        numbers, positions, cell, batch = (inputs[k] for k in ("numbers", "positions", "cell", "batch"))
        i, j = inputs["edge_index"]
        shifts = inputs["shifts"]
        r = edge_vectors(positions, cell, batch, i, j, shifts)
        d = np.linalg.norm(r, axis=1)
        real = d > 0
        i, j, r, d = i[real], j[real], r[real], d[real]
        phi, dphi = self.pair(d)
        n, b = len(numbers), len(cell)
        energy = np.zeros(b)
        np.add.at(energy, batch[i], 0.5 * phi)
        forces = np.zeros((n, 3))
        np.add.at(forces, i, (dphi / d)[:, None] * r)
        virial = np.zeros((b, 3, 3))
        np.add.at(virial, batch[i], 0.5 * (dphi / d)[:, None, None] * r[:, :, None] * r[:, None, :])
        volume = np.abs(np.linalg.det(cell))
        stress = np.where(volume[:, None, None] > 0, virial / np.where(volume > 0, volume, 1)[:, None, None], 0)
        q = np.array([self.charges.get(int(z), 0.0) for z in numbers])
        return {
            "energy": energy,
            "forces": forces,
            "stress": stress,
            "magmoms": np.zeros(n),
            "charges": q,
            "born_charges": q[:, None, None] * np.eye(3),
            "dielectric": np.repeat(self.dielectric[None], b, 0),
        }

    def predict(self, structures, *, batch_size=None, allow_overlap=False):
        single = not isinstance(structures, (list, tuple))
        items = [as_structure(s) for s in ([structures] if single else structures)]
        out = self.evaluate(build_graph(items, self.cutoff, check_overlap=not allow_overlap))
        results = [Prediction.from_outputs(values) for values in split_outputs(out, [len(s) for s in items])]
        return results[0] if single else results
