"""Group velocities v = df/dq (Hellmann-Feynman on a central difference of D, degenerate bands rotated).

Units: THz·Å (f in THz, q Cartesian without 2 pi, in 1/Å); 1 THz·Å = 0.1 km/s. Imaginary and zero modes get
zero velocity, as in phonopy.
"""

from __future__ import annotations

import numpy as np

from mtsim.phonon.dynamical import DynamicalMatrix, to_thz
from mtsim.units import THZ_PER_SQRT_EV_A2_AMU

DELTA = 1e-5
"""1/Å. Step of the central difference of D."""
DEGENERATE = 1e-4
"""THz. Bands closer than this are treated as degenerate."""
GENERIC_DIRECTION = np.array([1.0, 2.0**0.5, 3.0**0.5]) / 6.0**0.5
"""Direction along which degenerate bands are rotated to diagonalise dD/dq."""


def group_velocities(dynmat: DynamicalMatrix, qpoints: np.ndarray) -> np.ndarray:
    """Velocities [nq, n_bands, 3] (THz·Å) at ``qpoints`` [nq,3] (reduced), bands ordered as the frequencies."""
    qpoints = np.atleast_2d(np.asarray(qpoints, dtype=float))
    cell = dynmat.supercell.unitcell.cell
    values, vectors = np.linalg.eigh(dynmat(qpoints))
    frequencies = to_thz(values)
    derivative = np.stack(
        [(dynmat(qpoints + step) - dynmat(qpoints - step)) / (2 * DELTA) for step in DELTA * cell.T]
    )  # [3, nq, nb, nb]; q_reduced = cell @ q_cartesian
    out = np.zeros(frequencies.shape + (3,))
    for k, (f, e) in enumerate(zip(frequencies, vectors)):
        projected = np.einsum("ib,aij,jc->abc", e.conj(), derivative[:, k], e)
        start = 0
        for stop in list(np.flatnonzero(np.diff(f) > DEGENERATE) + 1) + [len(f)]:
            block = projected[:, start:stop, start:stop]
            _, rotation = np.linalg.eigh(np.einsum("a,abc->bc", GENERIC_DIRECTION, block))
            dlambda = np.einsum("bi,abc,ci->ia", rotation.conj(), block, rotation).real
            real = np.where(f[start:stop] > 1e-6, f[start:stop], np.inf)
            out[k, start:stop] = dlambda * THZ_PER_SQRT_EV_A2_AMU**2 / (2 * real)[:, None]
            start = stop
    return out
