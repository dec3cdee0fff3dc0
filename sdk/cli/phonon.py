"""``mtsim phonon`` and ``mtsim qha``: phonons with the NAC, DOS, thermal properties and the QHA from one model.

Units on the command line: GPa, K, Å (displacement amplitude), eV/Å (fmax); q directions in reduced coordinates.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mtsim.cli.common import load_model, model_options, read_structure
from mtsim.phonon.cells import SUPERCELL_WIDTH, default_supercell
from mtsim.phonon.nac import EPS_INF_METALLIC


def common_options(function):
    """Options shared by ``phonon`` and ``qha``."""
    options = [
        model_options,
        click.option(
            "--supercell",
            nargs=3,
            type=click.IntRange(min=1),
            default=None,
            help=f"Diagonal supercell (default: every width >= {SUPERCELL_WIDTH:g} Å and 2 x cutoff).",
        ),
        click.option(
            "--allow-small-supercell",
            is_flag=True,
            help="Accept a supercell whose shortest lattice vector is below 2 x the model's cutoff (force "
            "constants then mix periodic images).",
        ),
        click.option(
            "--mesh",
            nargs=3,
            type=click.IntRange(min=1),
            default=(20, 20, 20),
            show_default=True,
            help="q mesh for the DOS and thermal properties.",
        ),
        click.option(
            "--nac/--no-nac",
            default=None,
            help="Non-analytical correction from the model's Z* and eps_inf  [default: auto: on unless the "
            "structure is metallic: --metallic, only metal elements, or eps_inf above "
            f"{EPS_INF_METALLIC:g}]",
        ),
        click.option("--metallic", is_flag=True, help="The structure is a metal: no NAC (with --nac: an error)."),
        click.option("--nac-method", type=click.Choice(["gonze", "wang"]), default="gonze", show_default=True),
        click.option("--relax/--no-relax", default=True, show_default=True, help="Relax positions and cell first."),
        click.option("--fmax", type=float, default=0.02, show_default=True, help="Relaxation force tolerance, eV/Å."),
        click.option("--amplitude", type=float, default=0.01, show_default=True, help="Displacement, Å."),
        click.option("--tmax", type=float, default=1000.0, show_default=True, help="Highest temperature, K."),
        click.option("--tstep", type=float, default=10.0, show_default=True, help="Temperature step, K."),
        click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Output directory."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def prepare(structure_path, model_path, device, precision, relax, pressure, fmax, nac, metallic, arguments):
    """Check the arguments, read, load the model, and relax (cell at ``pressure`` GPa) if asked; returns (model,
    Structure)."""
    from mtsim.checks import non_negative, positive
    from mtsim.phonon import relax_structure
    from mtsim.relax import relax_arguments
    from mtsim.structure import as_structure

    if nac and metallic:
        raise click.UsageError("--nac contradicts --metallic (a metal has no LO-TO splitting)")
    try:
        relax_arguments(fmax, pressure)
        positive("--amplitude", arguments["amplitude"])
        non_negative("--tmax", arguments["tmax"])
        positive("--tstep", arguments["tstep"])
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    atoms = read_structure(structure_path)
    model = load_model(model_path, device, precision)
    if not relax:
        if pressure:
            raise click.UsageError("--pressure needs --relax (the cell is relaxed at that pressure)")
        return model, as_structure(atoms)
    click.echo(f"relaxing positions and cell at {pressure:g} GPa to fmax {fmax:g} eV/Å", err=True)
    structure, _ = relax_structure(model, atoms, fmax=fmax, cell=True, pressure=pressure)
    return model, structure


@click.command()
@click.argument("structure", type=click.Path(exists=True, dir_okay=False))
@common_options
@click.option("--pressure", type=float, default=0.0, show_default=True, help="Pressure of the cell relaxation, GPa.")
@click.option(
    "--q-direction",
    nargs=3,
    type=float,
    default=(1.0, 0.0, 0.0),
    show_default=True,
    help="Direction of approach to Gamma for the LO-TO splitting (reduced coordinates).",
)
@click.option("--npoints", type=int, default=51, show_default=True, help="q points per band segment.")
def phonon(
    structure,
    model_path,
    device,
    precision,
    supercell,
    allow_small_supercell,
    mesh,
    nac,
    metallic,
    nac_method,
    relax,
    fmax,
    amplitude,
    tmax,
    tstep,
    output,
    pressure,
    q_direction,
    npoints,
):
    """Phonons of STRUCTURE: force constants, LO-TO splitting from the model's Z*/eps_inf, bands, DOS, thermal
    properties; writes POSCAR-unitcell, FORCE_CONSTANTS, BORN, band.yaml, phonon.json, band.png, dos.png."""
    from mtsim.phonon import Phonons, SupercellTooSmall
    from mtsim.phonon.cells import shortest_lattice_vector
    from mtsim.phonon.files import (
        write_band_yaml,
        write_born,
        write_force_constants,
        write_json,
        write_poscar,
    )
    from mtsim.phonon.phonons import imaginary_summary
    from mtsim.phonon.plots import plot_bands, plot_dos

    model, unitcell = prepare(
        structure,
        model_path,
        device,
        precision,
        relax,
        pressure,
        fmax,
        nac,
        metallic,
        {"amplitude": amplitude, "tmax": tmax, "tstep": tstep},
    )
    size = tuple(supercell) if supercell else default_supercell(unitcell.cell, model.cutoff)
    out = Path(output)
    try:
        ph = Phonons(unitcell, size)
        ph.calculate_force_constants(model, amplitude, progress_bar=True, allow_small_supercell=allow_small_supercell)
        choice = ph.nac_from_model(model, nac_method, "auto" if nac is None else nac, metallic)
        bands = ph.band_structure(npoints)
        sampled = ph.mesh(mesh, progress_bar=True)
    except SupercellTooSmall as err:
        raise click.UsageError(str(err)) from None
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    born, dielectric = ph.born, ph.dielectric
    shortest = shortest_lattice_vector(ph.supercell.structure.cell)
    thermal = ph.thermal_properties(np.arange(0.0, tmax + tstep / 2, tstep), sampled)
    gamma = ph.gamma_report(q_direction)
    imaginary = imaginary_summary(bands, sampled)
    formula = unitcell.to_atoms().get_chemical_formula()

    write_poscar(out / "POSCAR-unitcell", unitcell)
    write_force_constants(out / "FORCE_CONSTANTS", ph.full_force_constants())
    write_born(out / "BORN", born, dielectric, ph.symmetry.independent_atoms)
    write_band_yaml(out / "band.yaml", bands, unitcell, ph.masses)
    write_json(
        out / "phonon.json",
        {
            "formula": formula,
            "space_group": f"{ph.symmetry.symbol} ({ph.symmetry.number})",
            "supercell_matrix": np.diag(size),
            "n_displacements": len(ph.displacements),
            "amplitude_angstrom": amplitude,
            "supercell_check": {
                "shortest_lattice_vector_angstrom": shortest,
                "cutoff_angstrom": float(model.cutoff),
                "contains_cutoff_sphere": bool(shortest >= 2 * model.cutoff - 1e-6),
            },
            "nac": {
                "applied": choice.applied,
                "reason": choice.reason,
                "method": nac_method if choice.applied else None,
                "born_charges": born,
                "dielectric": dielectric,
            },
            "gamma": gamma,
            "imaginary_modes": imaginary,
            "mesh": list(mesh),
            "thermal_properties": {
                "temperature_K": thermal.temperatures,
                "free_energy_eV": thermal.free_energy,
                "entropy_eV_per_K": thermal.entropy,
                "heat_capacity_eV_per_K": thermal.heat_capacity,
                "zero_point_energy_eV": thermal.zero_point,
            },
            "units": {"frequency": "THz", "per": "unit cell", "q": "reduced coordinates"},
        },
    )
    plot_bands(out / "band.png", bands, f"{formula} {ph.symmetry.symbol}")
    plot_dos(out / "dos.png", ph.density_of_states(sampled), formula)

    click.echo(
        f"{formula} ({ph.symmetry.symbol}), supercell {size[0]}x{size[1]}x{size[2]}, "
        f"{len(ph.displacements)} displacements"
    )
    if shortest < 2 * model.cutoff - 1e-6:
        click.echo(
            f"warning: supercell shortest lattice vector {shortest:.3f} Å < 2 x cutoff {model.cutoff:g} Å "
            "(allowed by --allow-small-supercell): the force constants mix periodic images",
            err=True,
        )
    click.echo(f"NAC {'applied' if choice.applied else 'not applied'}: {choice.reason}")
    click.echo("Gamma (THz): " + " ".join(f"{f:.3f}" for f in gamma["frequencies"]))
    if choice.applied:
        click.echo(
            f"Gamma with NAC along {tuple(q_direction)} (THz): "
            + " ".join(f"{f:.3f}" for f in gamma["frequencies_nac"])
        )
        click.echo(f"LO-TO splitting: {gamma['lo_to_splitting']:.3f} THz")
    click.echo(
        f"imaginary modes: {imaginary['band_path_count']} on the band path, {imaginary['mesh_count']} on the "
        f"mesh (lowest {imaginary['lowest_mesh_frequency']:.3f} THz)"
    )
    click.echo(f"wrote POSCAR-unitcell, FORCE_CONSTANTS, BORN, band.yaml, phonon.json, band.png, dos.png to {out}")


@click.command()
@click.argument("structure", type=click.Path(exists=True, dir_okay=False))
@common_options
@click.option(
    "--relax-pressure",
    type=float,
    default=0.0,
    show_default=True,
    help="Pressure (GPa) of the reference relaxation the volumes are scaled from.",
)
@click.option(
    "--pressure",
    "pressures",
    type=float,
    multiple=True,
    default=(0.0,),
    show_default=True,
    help="Pressure (GPa) at which G(T) is reported; repeat for several.",
)
@click.option(
    "--volume-range",
    type=float,
    default=0.025,
    show_default=True,
    help="Volumes from 1 - r to 1 + r times the reference.",
)
@click.option("--volumes", "n_volumes", type=int, default=11, show_default=True)
@click.option("--eos", type=click.Choice(["vinet", "birch_murnaghan"]), default="vinet", show_default=True)
def qha(
    structure,
    model_path,
    device,
    precision,
    supercell,
    allow_small_supercell,
    mesh,
    nac,
    metallic,
    nac_method,
    relax,
    fmax,
    amplitude,
    tmax,
    tstep,
    output,
    relax_pressure,
    pressures,
    volume_range,
    n_volumes,
    eos,
):
    """Quasi-harmonic G(T, P), V(T), B(T) and thermal expansion of STRUCTURE; writes qha.json, e-v.dat, qha.png."""
    from mtsim.phonon import SupercellTooSmall, nac_choice, quasi_harmonic
    from mtsim.phonon.files import write_json
    from mtsim.phonon.plots import plot_qha

    model, unitcell = prepare(
        structure,
        model_path,
        device,
        precision,
        relax,
        relax_pressure,
        fmax,
        nac,
        metallic,
        {"amplitude": amplitude, "tmax": tmax, "tstep": tstep},
    )
    size = tuple(supercell) if supercell else default_supercell(unitcell.cell, model.cutoff)
    out = Path(output)
    temperatures = np.arange(0.0, tmax + tstep / 2, tstep)
    choice = nac_choice(model, unitcell, "auto" if nac is None else nac, metallic)
    click.echo(f"NAC {'applied' if choice.applied else 'not applied'}: {choice.reason}")
    try:
        result = quasi_harmonic(
            model,
            unitcell,
            size,
            temperatures,
            mesh,
            volume_range,
            n_volumes,
            fmax,
            choice.applied,
            nac_method,
            amplitude,
            eos,
            progress_bar=True,
            allow_small_supercell=allow_small_supercell,
        )
        curves = [result.at_pressure(p) for p in pressures]
    except SupercellTooSmall as err:
        raise click.UsageError(str(err)) from None
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    formula = unitcell.to_atoms().get_chemical_formula()
    (out / "e-v.dat").write_text(
        "# cell volume (A^3)   energy of cell other than phonon (eV)\n"
        + "".join(f"{v:20.8f} {e:20.8f}\n" for v, e in zip(result.volumes, result.energies))
    )
    static = result.static
    write_json(
        out / "qha.json",
        {
            "formula": formula,
            "supercell_matrix": np.diag(size),
            "mesh": list(mesh),
            "nac": choice.applied,
            "nac_reason": choice.reason,
            "eos": eos,
            "volumes_A3": result.volumes,
            "energies_eV": result.energies,
            "temperatures_K": temperatures,
            "vibrational_free_energy_eV": result.free_energies,
            "static_eos": {
                "e0_eV": static.e0,
                "v0_A3": static.v0,
                "b0_GPa": static.b0_gpa,
                "b0_prime": static.b0_prime,
            },
            "results": [
                {
                    "pressure_GPa": c.pressure,
                    "volume_A3": c.volume,
                    "gibbs_eV": c.gibbs,
                    "bulk_modulus_GPa": c.bulk_modulus,
                    "thermal_expansion_per_K": c.thermal_expansion,
                    "within_volume_range": c.within_range,
                }
                for c in curves
            ],
            "units": {"per": "unit cell"},
        },
    )
    plot_qha(out / "qha.png", curves, formula)
    click.echo(f"{formula}: static V0 = {static.v0:.4f} Å^3, B0 = {static.b0_gpa:.2f} GPa, B0' = {static.b0_prime:.2f}")
    for c in curves:
        room = int(np.argmin(np.abs(temperatures - 300.0)))
        click.echo(
            f"P = {c.pressure:g} GPa, T = {temperatures[room]:g} K: V = {c.volume[room]:.4f} Å^3, "
            f"G = {c.gibbs[room]:.6f} eV, alpha_V = {c.thermal_expansion[room]:.3e} /K"
        )
    click.echo(f"wrote qha.json, e-v.dat, qha.png to {out}")
