"""mtsim.phonon: harmonic phonons, the non-analytical correction (LO-TO), DOS, thermal properties and the QHA,
natively from one mtsim model, writing files phonopy reads.

``Phonons`` is the façade; the layers below it take and return plain numpy:

- ``symmetry``, ``cells``: spglib space group, diagonal supercells in phonopy's atom order, shortest vectors, the
  default supercell and the check that it contains the model's cutoff sphere (``check_supercell``);
- ``displacements``, ``force_constants``: symmetry-reduced displacements, least-squares force constants,
  permutation symmetry and the translational sum rule;
- ``born``, ``nac``, ``dynamical``: Z*/eps symmetrisation, Gonze-Lee and Wang NAC and when to apply it
  (``choose_nac``), D(q) and frequencies;
- ``bands``, ``mesh``, ``thermal``, ``velocities``: band paths, DOS, F/S/U/C_v, group velocities;
- ``qha``, ``workflow``: equations of state, G(T, P), thermal expansion, and the model-driven QHA;
- ``files``, ``plots``: FORCE_CONSTANTS, BORN, band.yaml, POSCAR, JSON; band/DOS/QHA PNGs.

Units: Å, eV, amu, e; force constants eV/Å^2; frequencies THz; q in reduced coordinates (no 2 pi);
temperatures K; pressures GPa.
"""

from mtsim.phonon.bands import BandStructure
from mtsim.phonon.born import symmetrize_born
from mtsim.phonon.cells import SUPERCELL_WIDTH, SupercellTooSmall, check_supercell, default_supercell
from mtsim.phonon.dynamical import DynamicalMatrix
from mtsim.phonon.mesh import DensityOfStates, Mesh
from mtsim.phonon.nac import EPS_INF_METALLIC, GonzeLee, NACChoice, Wang, choose_nac
from mtsim.phonon.phonons import Phonons, imaginary_summary
from mtsim.phonon.qha import EOS, QHA, QHAResult, fit_eos
from mtsim.phonon.thermal import ThermalProperties, thermal_properties
from mtsim.phonon.workflow import nac_choice, quasi_harmonic, relax_structure

__all__ = [
    "EOS",
    "EPS_INF_METALLIC",
    "QHA",
    "SUPERCELL_WIDTH",
    "BandStructure",
    "DensityOfStates",
    "DynamicalMatrix",
    "GonzeLee",
    "Mesh",
    "NACChoice",
    "Phonons",
    "QHAResult",
    "SupercellTooSmall",
    "ThermalProperties",
    "Wang",
    "check_supercell",
    "choose_nac",
    "default_supercell",
    "fit_eos",
    "imaginary_summary",
    "nac_choice",
    "quasi_harmonic",
    "relax_structure",
    "symmetrize_born",
    "thermal_properties",
]
