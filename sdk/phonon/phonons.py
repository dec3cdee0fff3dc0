"""``Phonons``: the façade over the phonon modules (phonopy's workflow, plain numpy in and out)."""

from __future__ import annotations

import numpy as np
from ase.data import atomic_masses

from mtsim.model import ATOM_BUDGET
from mtsim.phonon.bands import BandStructure, band_path, gamma_directions, segment_distances
from mtsim.phonon.born import symmetrize_born
from mtsim.phonon.cells import Supercell, check_supercell
from mtsim.phonon.displacements import Displacement, displaced_structures, generate_displacements
from mtsim.phonon.dynamical import DynamicalMatrix
from mtsim.phonon.force_constants import full_force_constants, solve_force_constants, symmetrize
from mtsim.phonon.mesh import DensityOfStates, Mesh, density_of_states, irreducible_qpoints
from mtsim.phonon.nac import GonzeLee, NACChoice, Wang, choose_nac
from mtsim.phonon.symmetry import space_group
from mtsim.phonon.thermal import ThermalProperties, thermal_properties
from mtsim.phonon.velocities import group_velocities
from mtsim.progress import progress
from mtsim.structure import Structure, as_structure

NAC_METHODS = {"gonze": GonzeLee, "wang": Wang}
IMAGINARY_TOLERANCE = 0.01
"""THz. Frequencies below minus this count as imaginary modes."""


class Phonons:
    """Harmonic phonons of ``unitcell`` (``mtsim.Structure`` or ``ase.Atoms``, used as the primitive cell) on a
    diagonal ``supercell`` (3 ints).

    Typical use::

        ph = Phonons.from_model(model, atoms, (4, 4, 4), nac=True)
        ph.frequencies([[0, 0, 0]], q_direction=[1, 0, 0])     # THz, LO-TO split
        bands = ph.band_structure(); mesh = ph.mesh((20, 20, 20)); tp = ph.thermal_properties(range(0, 1001, 10), mesh)

    Units: Å, eV, amu; force constants eV/Å^2; frequencies THz; q in reduced coordinates of the unit cell's
    reciprocal lattice (no 2 pi). ``masses`` (amu) default to ASE's.
    """

    def __init__(self, unitcell, supercell=(2, 2, 2), masses=None, symprec: float = 1e-5):
        self.unitcell: Structure = as_structure(unitcell)
        self.supercell = Supercell(self.unitcell, tuple(int(n) for n in supercell))
        self.masses = atomic_masses[self.unitcell.numbers] if masses is None else np.asarray(masses, dtype=float)
        self.symprec = symprec
        self.symmetry = space_group(self.unitcell, symprec)
        self.supercell_symmetry = self.supercell.symmetry(self.symmetry)
        self.displacements: list[Displacement] = []
        self.force_constants: np.ndarray | None = None
        self.nac: GonzeLee | Wang | None = None
        self.nac_choice: NACChoice | None = None
        self.born: np.ndarray | None = None
        self.dielectric: np.ndarray | None = None
        self._dynamical_matrix: DynamicalMatrix | None = None

    # ------------------------------------------------------------------ force constants
    def generate_displacements(self, amplitude: float = 0.01, plusminus: bool | str = "auto") -> list[Structure]:
        """Symmetry-reduced displacements of ``amplitude`` Å; returns the displaced supercells."""
        self.displacements = generate_displacements(self.supercell_symmetry, self.supercell, amplitude, plusminus)
        return displaced_structures(self.supercell, self.displacements)

    def produce_force_constants(self, forces: np.ndarray, symmetrize_fc: bool = True) -> np.ndarray:
        """Force constants from ``forces`` [n_disp, n_s, 3] (eV/Å) of the displaced supercells, symmetrised
        (index permutation, translational sum rule) unless ``symmetrize_fc`` is False; compact layout."""
        fc = solve_force_constants(self.supercell_symmetry, self.supercell, self.displacements, forces)
        self.set_force_constants(symmetrize(fc, self.supercell) if symmetrize_fc else fc)
        return self.force_constants

    def set_force_constants(self, force_constants: np.ndarray) -> None:
        """Compact [n_unit, n_s, 3, 3] or full [n_s, n_s, 3, 3] force constants (eV/Å^2, phonopy's atom order)."""
        fc = np.asarray(force_constants, dtype=float)
        self.force_constants = fc[self.supercell.p2s] if fc.shape[0] == fc.shape[1] else fc
        self._dynamical_matrix = None

    def full_force_constants(self) -> np.ndarray:
        """Force constants in phonopy's full layout [n_s, n_s, 3, 3] (eV/Å^2)."""
        return full_force_constants(self.force_constants, self.supercell)

    def calculate_force_constants(
        self,
        model,
        amplitude: float = 0.01,
        plusminus: bool | str = "auto",
        batch_size: int | None = None,
        progress_bar: bool = False,
        allow_small_supercell: bool = False,
    ) -> np.ndarray:
        """Displace, evaluate the supercells with ``model``, and build the force constants.

        A supercell that does not contain the model's cutoff sphere is refused (``SupercellTooSmall``, rule in
        ``mtsim.phonon.cells.check_supercell``) unless ``allow_small_supercell``.

        ``batch_size`` supercells per model call (default: one on the CPU, where batching saves no time but costs
        memory; up to ``mtsim.model.ATOM_BUDGET`` atoms on a GPU). Residual forces of a not fully relaxed cell
        cancel in the least squares, since every displacement comes with its opposite (computed or implied by
        symmetry) unless ``plusminus`` is False.
        """
        from mtsim.checks import positive

        positive("amplitude", amplitude)
        if not allow_small_supercell:
            check_supercell(self.supercell, float(model.cutoff))
        structures = self.generate_displacements(amplitude, plusminus)
        if batch_size is None:
            on_gpu = getattr(model, "device", "cpu") == "cuda"
            batch_size = max(1, ATOM_BUDGET // len(self.supercell.structure)) if on_gpu else 1
        batches = [structures[k : k + batch_size] for k in range(0, len(structures), batch_size)]
        forces = []
        with progress(batches, f"forces of {len(structures)} supercells", progress_bar) as bar:
            for batch in bar:
                forces += [p.forces for p in model.predict(batch)]
        return self.produce_force_constants(np.array(forces, dtype=float))

    # ------------------------------------------------------------------ NAC
    def set_nac(
        self, born: np.ndarray, dielectric: np.ndarray, method: str = "gonze", symmetrize_born_charges=True
    ) -> None:
        """Non-analytical correction from Z* [n_unit,3,3] (e, ``Z[i,a,b] = dF_ib/dE_a``) and eps_inf [3,3];
        ``method`` ``"gonze"`` (Gonze-Lee) or ``"wang"``; Z* and eps are symmetrised (with charge neutrality)
        unless told otherwise. ``born=None`` switches the NAC off."""
        if born is None:
            self.nac = None
        else:
            if method not in NAC_METHODS:
                raise ValueError(f"unknown NAC method {method!r}; choose from {sorted(NAC_METHODS)}")
            if symmetrize_born_charges:
                born, dielectric = symmetrize_born(born, dielectric, self.symmetry)
            self.nac = NAC_METHODS[method](self.unitcell, born, dielectric)
        self._dynamical_matrix = None

    def nac_from_model(self, model, method: str = "gonze", nac: bool | str = True, metallic: bool = False) -> NACChoice:
        """The model's Z* and eps_inf on the unit cell, symmetrised (kept in ``born``, ``dielectric``), and the NAC
        from them where ``mtsim.phonon.nac.choose_nac`` says so (``nac`` True/False/"auto", ``metallic``); the
        decision is kept in ``nac_choice`` and returned."""
        p = model.predict(self.unitcell)
        self.born, self.dielectric = symmetrize_born(p.born_charges, p.dielectric, self.symmetry)
        self.nac_choice = choose_nac(self.unitcell.numbers, self.dielectric, nac, metallic)
        if self.nac_choice.applied:
            self.set_nac(self.born, self.dielectric, method, symmetrize_born_charges=False)
        else:
            self.set_nac(None, None)
        return self.nac_choice

    @classmethod
    def from_model(
        cls,
        model,
        unitcell,
        supercell=(2, 2, 2),
        nac: bool | str = "auto",
        nac_method: str = "gonze",
        amplitude: float = 0.01,
        plusminus: bool | str = "auto",
        masses=None,
        symprec: float = 1e-5,
        batch_size: int | None = None,
        progress_bar: bool = False,
        metallic: bool = False,
        allow_small_supercell: bool = False,
    ) -> Phonons:
        """Force constants of ``unitcell`` from ``model`` and the NAC from its Z* and eps_inf as ``nac`` (True,
        False, or "auto": decided by ``choose_nac`` with ``metallic``) says; the decision is in ``nac_choice``."""
        phonons = cls(unitcell, supercell, masses=masses, symprec=symprec)
        phonons.calculate_force_constants(model, amplitude, plusminus, batch_size, progress_bar, allow_small_supercell)
        phonons.nac_from_model(model, nac_method, nac, metallic)
        return phonons

    # ------------------------------------------------------------------ phonons
    @property
    def dynamical_matrix(self) -> DynamicalMatrix:
        if self.force_constants is None:
            raise RuntimeError("no force constants yet: call calculate_force_constants or set_force_constants")
        if self._dynamical_matrix is None:
            self._dynamical_matrix = DynamicalMatrix(self.supercell, self.force_constants, self.masses, self.nac)
        return self._dynamical_matrix

    def frequencies(self, qpoints, q_direction=None, eigenvectors: bool = False):
        """Frequencies [nq, 3n] (THz) at ``qpoints`` [nq,3]; ``q_direction`` is the approach to Gamma for the NAC."""
        return self.dynamical_matrix.frequencies(qpoints, q_direction, eigenvectors)

    def band_structure(self, npoints: int = 51, path: str | None = None) -> BandStructure:
        """Frequencies along ASE's standard path (or ``path``); at Gamma the NAC uses the segment's direction."""
        segments, labels = band_path(self.unitcell, npoints, path)
        frequencies = []
        for segment in segments:
            f = self.frequencies(segment)
            for k, direction in enumerate(gamma_directions(segment)):
                if direction is not None:
                    f[k] = self.frequencies(segment[k], direction)[0]
            frequencies.append(f)
        return BandStructure(segments, labels, segment_distances(self.unitcell, segments), frequencies)

    def mesh(self, size=(20, 20, 20), progress_bar: bool = False) -> Mesh:
        """Frequencies on the irreducible points of a Gamma-centred mesh."""
        qpoints, weights = irreducible_qpoints(self.unitcell, size, self.symprec)
        blocks = [qpoints[k : k + 256] for k in range(0, len(qpoints), 256)]
        with progress(blocks, f"mesh {tuple(size)}", progress_bar) as bar:
            frequencies = np.concatenate([self.frequencies(block) for block in bar])
        return Mesh(tuple(int(n) for n in size), qpoints, weights, frequencies)

    def density_of_states(self, mesh: Mesh, sigma: float | None = None) -> DensityOfStates:
        """Gaussian-smeared total DOS (states/THz per unit cell)."""
        return density_of_states(mesh, sigma)

    def thermal_properties(self, temperatures, mesh: Mesh) -> ThermalProperties:
        """Harmonic F, S, U, C_v per unit cell (eV, eV/K) at ``temperatures`` (K) from ``mesh``."""
        return thermal_properties(mesh.frequencies, mesh.weights, temperatures)

    def group_velocities(self, qpoints) -> np.ndarray:
        """Group velocities [nq, 3n, 3] in THz·Å (x 0.1 for km/s)."""
        return group_velocities(self.dynamical_matrix, qpoints)

    def gamma_report(self, q_direction=(1, 0, 0)) -> dict:
        """Gamma frequencies (THz) without the NAC and with it along ``q_direction`` (reduced), the LO-TO shifts of
        the sorted modes and their largest value (the LO-TO splitting), and Gamma's imaginary modes."""
        plain = self.frequencies([0, 0, 0])[0]
        with_nac = self.frequencies([0, 0, 0], q_direction)[0] if self.nac is not None else plain
        shifts = with_nac - plain
        return {
            "q_direction": [float(x) for x in q_direction],
            "frequencies": plain,
            "frequencies_nac": with_nac,
            "lo_to_shifts": shifts,
            "lo_to_splitting": float(shifts.max()),
            "imaginary_modes": plain[plain < -IMAGINARY_TOLERANCE],
        }


def imaginary_summary(bands: BandStructure, mesh: Mesh) -> dict:
    """Lowest frequency (THz) and where, and the number of imaginary modes on the band path and the mesh."""
    path_f = np.concatenate(bands.frequencies)
    lowest = int(np.argmin(mesh.frequencies.min(axis=1)))
    return {
        "tolerance_thz": IMAGINARY_TOLERANCE,
        "band_path_count": int((path_f < -IMAGINARY_TOLERANCE).sum()),
        "mesh_count": int((mesh.frequencies < -IMAGINARY_TOLERANCE).sum()),
        "lowest_mesh_frequency": float(mesh.frequencies[lowest].min()),
        "lowest_mesh_qpoint": mesh.qpoints[lowest],
    }
