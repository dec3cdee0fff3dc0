"""``mtsim predict``: all outputs for every structure in files ASE can read."""

from __future__ import annotations

import json

import click
import numpy as np

from mtsim.cli.common import check_arguments, load_model, model_options
from mtsim.progress import progress
from mtsim.units import GPA


def read_structures(paths):
    """Every readable frame of every file as (label, ase.Atoms), and the failures as (label, reason): a broken
    frame ends its file's frames (the frames before it are kept); a file without frames is a failure."""
    from mtsim.structure import StructureFileError, iread_frames

    frames, failures = [], []
    for path in paths:
        images, error = [], None
        try:
            for atoms in iread_frames(path):
                images.append(atoms)
        except StructureFileError as err:
            error = err
        several = len(images) + (error is not None) > 1
        frames += [(f"{path}[{k}]" if several else str(path), atoms) for k, atoms in enumerate(images)]
        if error is not None:
            failures.append((f"{path}[{error.frame}]" if several else str(path), str(error)))
        elif not images:
            failures.append((str(path), f"cannot read {path}: it holds no structures"))
    return frames, failures


def summary(label, atoms, p, skip=()) -> str:
    """One readable line per structure (outputs in ``skip`` left out)."""
    parts = [f"{label}: {atoms.get_chemical_formula()} ({len(atoms)} atoms)"]
    if "energy" not in skip:
        parts.append(f"E = {p.energy:.6f} eV ({p.energy / len(atoms):.6f} eV/atom)")
    if "stress" not in skip:
        parts.append(f"P = {-np.trace(p.stress) / 3 / GPA:.3f} GPa" if atoms.cell.rank == 3 else "P = n/a")
    if "forces" not in skip:
        parts.append(f"max|F| = {np.linalg.norm(p.forces, axis=1).max():.4f} eV/Å")
    if "born_charges" not in skip:
        parts.append(f"mean|Z*_aa| = {np.abs(np.diagonal(p.born_charges, axis1=1, axis2=2)).mean():.3f} e")
    if "dielectric" not in skip:
        parts.append("eps_inf diag = [" + " ".join(f"{v:.3f}" for v in np.diag(p.dielectric)) + "]")
    return "  ".join(parts)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@model_options
@click.option("--format", "fmt", type=click.Choice(["json", "extxyz"]), default="extxyz", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write all outputs of every structure here."
)
@click.option("--allow-overlap", is_flag=True, help="Do not reject atoms closer than 0.1 Å.")
@click.option(
    "--include-untrained",
    is_flag=True,
    help="Also report outputs whose head the model marks untrained (they are not predictions).",
)
def predict(files, model_path, device, precision, fmt, output, allow_overlap, include_untrained):
    """Predict energy, forces, stress, magmoms, charges, Born charges and eps_inf for FILES (any ASE format).

    Each structure is evaluated on its own: every good one is printed and written, each one that fails (an
    unreadable frame, an unknown element, overlapping atoms, ...) is listed with its file, frame and reason, and
    the exit status is 1 if any failed."""
    from mtsim.checks import parent_exists

    check_arguments((parent_exists, "--output", output))
    frames, failures = read_structures(files)
    results = []
    if frames:
        model = load_model(model_path, device, precision)
        skip = () if include_untrained else tuple(model.untrained_outputs)
        if skip:
            click.echo(f"note: left out {', '.join(skip)}: untrained in this model (--include-untrained shows them)")
        with progress(frames, label="predicting") as bar:
            for label, atoms in bar:
                try:
                    p = model.predict(atoms, allow_overlap=allow_overlap)
                except (ValueError, RuntimeError) as err:
                    failures.append((label, str(err)))
                else:
                    results.append((label, atoms, p))
    for label, atoms, p in results:
        click.echo(summary(label, atoms, p, skip))
    if output and results:
        write_predictions(output, fmt, results, skip)
        click.echo(f"wrote {len(results)} structure(s) to {output}")
    for label, reason in failures:
        click.echo(f"failed: {label}: {reason}", err=True)
    if failures:
        raise click.ClickException(
            f"{len(failures)} structure(s) failed (listed above); "
            f"{len(results)} succeeded" + (f" and were written to {output}" if output and results else "")
        )


def write_predictions(path, fmt, results, skip=()) -> None:
    """``json``: a list of objects (label, formula, every output as nested lists); ``extxyz``: one frame per
    structure with per-atom outputs as arrays and per-structure outputs in the info line. Outputs in ``skip`` are
    left out."""
    if fmt == "json":
        records = [
            {
                "label": label,
                "formula": atoms.get_chemical_formula(),
                **{k: np.asarray(v).tolist() for k, v in p.as_dict().items() if k not in skip},
            }
            for label, atoms, p in results
        ]
        with open(path, "w") as handle:
            json.dump(records, handle, indent=1)
        return
    import ase.io

    frames = []
    for _, atoms, p in results:
        atoms = atoms.copy()
        atoms.calc = None
        per_structure = dict(
            energy=p.energy, stress=np.asarray(p.stress).reshape(9), dielectric=np.asarray(p.dielectric).reshape(9)
        )
        per_atom = dict(
            forces=p.forces, magmoms=p.magmoms, charges=p.charges, born_charges=p.born_charges.reshape(len(atoms), 9)
        )
        atoms.info.update({k: v for k, v in per_structure.items() if k not in skip})
        atoms.arrays.update({k: v for k, v in per_atom.items() if k not in skip})
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
