"""``mtsim md``, ``mtsim relax`` and ``mtsim hysteresis``: the native engines on the command line.

Units on the command line: fs (time step), ps (periods, event intervals), K, GPa, MV/cm (fields).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mtsim.checks import integer, md_arguments, output_file, parent_exists, positive
from mtsim.cli.common import check_arguments, load_model, model_options, read_structure
from mtsim.progress import progress
from mtsim.units import GPA, MV_PER_CM

FS_PER_PS = 1000.0


def write_structure(path, structure, prediction=None, info=None) -> None:
    """Write a structure; extxyz files (``.xyz``/``.extxyz``) also get every output of ``prediction`` and the
    entries of ``info`` in their info line."""
    import ase.io

    atoms = structure.to_atoms()
    atoms.info.update(info or {})
    if prediction is not None and str(path).endswith((".xyz", ".extxyz")):
        n = len(atoms)
        atoms.info.update(
            energy=prediction.energy,
            stress=np.asarray(prediction.stress).reshape(9),
            dielectric=np.asarray(prediction.dielectric).reshape(9),
        )
        atoms.arrays.update(
            forces=prediction.forces,
            magmoms=prediction.magmoms,
            charges=prediction.charges,
            born_charges=np.asarray(prediction.born_charges).reshape(n, 9),
        )
        ase.io.write(path, atoms, format="extxyz")
    else:
        ase.io.write(path, atoms)


# ================================================================================================ md
@click.command("md")
@click.argument("structure", type=click.Path(exists=True, dir_okay=False), required=False)
@model_options
@click.option("--ensemble", type=click.Choice(["nve", "nvt-langevin", "nvt-nh", "npt"]), required=True)
@click.option(
    "--temperature",
    type=float,
    default=300.0,
    show_default=True,
    help="K: thermostat target and Maxwell-Boltzmann start.",
)
@click.option("--pressure", type=float, default=0.0, show_default=True, help="GPa (npt).")
@click.option("--timestep", type=float, required=True, help="fs.")
@click.option("--steps", type=int, required=True)
@click.option("--seed", type=int, default=None, help="Seed of the initial velocities and the Langevin noise.")
@click.option(
    "--field",
    type=float,
    nargs=3,
    default=None,
    metavar="EX EY EZ",
    help="Constant electric field, MV/cm (not with npt).",
)
@click.option(
    "--log", "log_path", type=click.Path(dir_okay=False), default="md_log.csv", show_default=True, help="CSV log."
)
@click.option(
    "--trajectory", type=click.Path(dir_okay=False), default=None, help="extxyz trajectory with every output per frame."
)
@click.option("--interval", type=int, default=10, show_default=True, help="Steps between log rows and frames.")
@click.option(
    "--barostat",
    type=click.Choice(["isotropic", "full"]),
    default="isotropic",
    show_default=True,
    help="npt: volume only, or the full cell.",
)
@click.option("--tdamp", type=float, default=100.0, show_default=True, help="fs, Nose-Hoover time constant.")
@click.option("--pdamp", type=float, default=1000.0, show_default=True, help="fs, barostat time constant.")
@click.option("--friction", type=float, default=0.01, show_default=True, help="1/fs, Langevin friction.")
@click.option("--remove-element", default=None, help="Event: remove one atom of this element periodically.")
@click.option("--remove-every", type=float, default=None, help="ps between removals (with --remove-element).")
@click.option(
    "--remove-rule",
    type=click.Choice(["random", "first", "last", "max-charge", "min-charge", "max-z"]),
    default="random",
    show_default=True,
    help="Which atom to remove (random uses --seed).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the final structure.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files (log, trajectory, -o, restart file).")
@click.option(
    "--restart",
    "restart",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Continue the run saved in this restart file (bitwise as if never stopped): the state comes from "
    "it (STRUCTURE and --seed are not used), --steps more steps are run, log and trajectory are "
    "appended to.",
)
@click.option(
    "--restart-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Restart file to write  [default: beside the log, LOG_STEM.restart.npz].",
)
@click.option(
    "--restart-interval",
    type=int,
    default=1000,
    show_default=True,
    help="Steps between restart files (0: only at the end); one is always written at the end.",
)
@click.option(
    "--max-temperature",
    type=float,
    default=None,
    help="K: stop when the temperature exceeds this  [default: 10 x max(start T, target T, 300 K)].",
)
@click.option(
    "--max-drift",
    type=float,
    default=1.0,
    show_default=True,
    help="eV/atom: stop when the conserved energy has drifted by more than this since the start.",
)
def md(
    structure,
    model_path,
    device,
    precision,
    ensemble,
    temperature,
    pressure,
    timestep,
    steps,
    seed,
    field,
    log_path,
    trajectory,
    interval,
    barostat,
    tdamp,
    pdamp,
    friction,
    remove_element,
    remove_every,
    remove_rule,
    output,
    overwrite,
    restart,
    restart_file,
    restart_interval,
    max_temperature,
    max_drift,
):
    """Molecular dynamics of STRUCTURE (any ASE format; the last frame).

    Existing output files are an error unless --overwrite; --restart continues a run (no STRUCTURE needed): its log
    and trajectory are appended to, its restart file and -o output replaced."""
    from mtsim.md import MDError, RemoveAtoms
    from mtsim.md import run as run_md

    if structure is None and restart is None:
        raise click.UsageError("STRUCTURE is needed unless --restart continues a run")

    if restart_file is None:
        stem = Path(log_path or trajectory or "md")
        restart_file = str(stem.with_name(stem.stem + ".restart.npz"))
    replace = overwrite or restart is not None
    check_arguments(
        (md_arguments, ensemble, timestep, steps, temperature, pressure, field),
        (integer, "--interval", interval, 1),
        (positive, "--tdamp", tdamp),
        (positive, "--pdamp", pdamp),
        (positive, "--friction", friction),
        (integer, "--restart-interval", restart_interval, 0),
        (positive, "--max-drift", max_drift),
        (output_file, "--log", log_path, replace),
        (output_file, "--trajectory", trajectory, replace),
        (output_file, "--output", output, replace),
        (output_file, "--restart-file", restart_file, replace),
    )
    if max_temperature is not None:
        check_arguments((positive, "--max-temperature", max_temperature))
    if remove_every is not None:
        check_arguments((positive, "--remove-every", remove_every))
    atoms = None if restart is not None else read_structure(structure)
    model = load_model(model_path, device, precision)
    hooks = []
    if remove_element is not None:
        if remove_every is None:
            raise click.BadParameter("--remove-element needs --remove-every (ps)", param_hint="--remove-every")
        try:
            hooks.append(RemoveAtoms(remove_element, remove_every * FS_PER_PS, rule=remove_rule, seed=seed))
        except (KeyError, ValueError) as err:
            raise click.ClickException(f"--remove-element: {err}") from None
    try:
        with progress(length=steps, label=f"md {ensemble}") as bar:
            sim = run_md(
                model,
                atoms,
                ensemble,
                timestep,
                steps,
                temperature,
                pressure,
                field=None if field is None else np.array(field) * MV_PER_CM,
                seed=seed,
                friction=friction,
                tdamp=tdamp,
                pdamp=pdamp,
                barostat=barostat,
                log=log_path,
                trajectory=trajectory,
                interval=interval,
                hooks=[*hooks, lambda _: bar.update(1)],
                overwrite=overwrite,
                restart=restart,
                restart_file=restart_file,
                restart_interval=restart_interval,
                max_temperature=max_temperature,
                max_drift=max_drift,
            )
    except (MDError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    state = sim.state
    drift = (sim.conserved - sim.reference_conserved) / state.n_atoms
    click.echo(
        f"{state.step} steps, {state.time / 1000:.4g} ps: T = {state.temperature:.2f} K, "
        f"E_pot = {state.energy:.6f} eV, conserved drift = {drift:.3e} eV/atom"
        + (f", P = {state.pressure:.4f} GPa" if state.volume else "")
    )
    for event in hooks:
        click.echo(f"removed {len(event.removed)} {event.symbol} atom(s); {state.n_atoms} atoms left")
    if log_path:
        click.echo(f"log: {log_path}")
    if trajectory:
        click.echo(f"trajectory: {trajectory}")
    click.echo(f"restart file: {restart_file}")
    if output:
        write_structure(output, state.to_structure(), state.prediction())
        click.echo(f"final structure: {output}")


# ================================================================================================ relax
@click.command("relax")
@click.argument("structure", type=click.Path(exists=True, dir_okay=False))
@model_options
@click.option("--fmax", type=float, default=0.01, show_default=True, help="eV/Å.")
@click.option("--cell/--no-cell", default=False, show_default=True, help="Relax the cell as well.")
@click.option("--pressure", type=float, default=0.0, show_default=True, help="GPa (with --cell).")
@click.option("--max-steps", type=int, default=500, show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Relaxed structure (default: STEM_relaxed.extxyz; extxyz gets every output).",
)
def relax(structure, model_path, device, precision, fmax, cell, pressure, max_steps, output):
    """Relax STRUCTURE (any ASE format; the last frame) with FIRE."""
    from mtsim.md import MDError
    from mtsim.relax import relax as run_relax
    from mtsim.relax import relax_arguments

    output = output or f"{Path(structure).stem}_relaxed.extxyz"
    check_arguments((relax_arguments, fmax, pressure, max_steps), (parent_exists, "--output", output))
    atoms = read_structure(structure)
    model = load_model(model_path, device, precision)
    with progress(length=max_steps, label="relaxing") as bar:
        try:
            result = run_relax(
                model,
                atoms,
                fmax=fmax,
                cell=cell,
                pressure=pressure,
                max_steps=max_steps,
                callback=lambda step, record: bar.update(1) if step else None,
            )
        except (MDError, ValueError) as err:
            raise click.ClickException(str(err)) from None
    s = result.structure
    status = "converged" if result.converged else "NOT converged"
    line = (
        f"{status} after {result.steps} steps: E = {result.energy:.6f} eV "
        f"({result.energy / len(s):.6f} eV/atom), max|F| = {result.fmax:.4g} eV/Å"
    )
    if cell:
        line += (
            f", H = {result.enthalpy:.6f} eV, V = {s.volume:.4f} Å^3, P = {-np.trace(result.stress) / 3 / GPA:.4f} GPa"
        )
    click.echo(line)
    write_structure(
        output,
        s,
        result.prediction,
        info={"converged": result.converged, "steps": result.steps, "fmax_reached": result.fmax},
    )
    if not result.converged:
        raise click.ClickException(
            f"relaxation did not converge: max|F| = {result.fmax:.4g} eV/Å (asked: fmax "
            f"{fmax:g}) after {result.steps} steps (--max-steps {max_steps}); the structure "
            f"written to {output} is the last one (an extxyz file marks it converged=False)"
        )
    click.echo(f"relaxed structure: {output}")


# ================================================================================================ hysteresis
@click.command("hysteresis")
@click.argument("structure", type=click.Path(exists=True, dir_okay=False))
@model_options
@click.option("--field-max", type=float, required=True, help="MV/cm (paper: 4).")
@click.option("--period", type=float, required=True, help="ps (paper: 200).")
@click.option("--cycles", type=int, default=5, show_default=True)
@click.option("--temperature", type=float, default=300.0, show_default=True, help="K.")
@click.option("--axis", type=click.Choice(["x", "y", "z"]), default="z", show_default=True)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default="hysteresis",
    show_default=True,
    help="Directory for pe_loop.csv, pe_loop.png and md_log.csv.",
)
@click.option("--timestep", type=float, default=2.0, show_default=True, help="fs.")
@click.option("--ensemble", type=click.Choice(["nvt-nh", "nvt-langevin", "nve"]), default="nvt-nh", show_default=True)
@click.option("--tdamp", type=float, default=100.0, show_default=True, help="fs, Nose-Hoover time constant.")
@click.option("--equilibration", type=float, default=0.0, show_default=True, help="ps at zero field first.")
@click.option("--seed", type=int, default=None)
@click.option("--interval", type=int, default=100, show_default=True, help="Steps between log rows.")
@click.option("--trajectory", type=click.Path(dir_okay=False), default=None, help="extxyz trajectory.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def hysteresis(
    structure,
    model_path,
    device,
    precision,
    field_max,
    period,
    cycles,
    temperature,
    axis,
    output,
    timestep,
    ensemble,
    tdamp,
    equilibration,
    seed,
    interval,
    trajectory,
    overwrite,
):
    """P-E hysteresis loop of STRUCTURE under E(t) = E_max cos(2 pi t / period) along --axis (existing output files
    are an error unless --overwrite)."""
    from mtsim.field_md import PE_LOOP_FILES, hysteresis_arguments, write_pe_loop
    from mtsim.field_md import hysteresis as run_hysteresis
    from mtsim.md import MDError

    check_arguments(
        (hysteresis_arguments, field_max, period, cycles, temperature, timestep, ensemble, equilibration),
        (integer, "--interval", interval, 1),
        (positive, "--tdamp", tdamp),
        (output_file, "--trajectory", trajectory, overwrite),
        *[
            (output_file, "--output", Path(output) / name, overwrite)
            for name in ("md_log.csv", *PE_LOOP_FILES)
            if Path(output).is_dir()
        ],
    )
    atoms = read_structure(structure)
    model = load_model(model_path, device, precision)
    directory = Path(output)
    directory.mkdir(parents=True, exist_ok=True)
    period_fs = period * FS_PER_PS
    steps_per_cycle = max(int(round(period_fs / timestep)), 1)
    total = int(round(equilibration * FS_PER_PS / timestep)) + cycles * steps_per_cycle
    with progress(length=total, label="hysteresis") as bar:
        try:
            result = run_hysteresis(
                model,
                atoms,
                field_max=field_max * MV_PER_CM,
                period=period_fs,
                cycles=cycles,
                temperature=temperature,
                axis=axis,
                timestep=timestep,
                ensemble=ensemble,
                seed=seed,
                tdamp=tdamp,
                equilibration=equilibration * FS_PER_PS,
                log=directory / "md_log.csv",
                trajectory=trajectory,
                interval=interval,
                hooks=[lambda _: bar.update(1)],
                overwrite=overwrite,
            )
        except (MDError, ValueError) as err:
            raise click.ClickException(str(err)) from None
    csv_path, png_path = write_pe_loop(result, directory, overwrite=overwrite)
    click.echo(
        f"remanent polarization P_r = {result.remanent:.4g} uC/cm2, "
        f"coercive field E_c = {result.coercive_MV_cm:.4g} MV/cm"
    )
    click.echo(f"wrote {csv_path}, {png_path} and {directory / 'md_log.csv'}")
