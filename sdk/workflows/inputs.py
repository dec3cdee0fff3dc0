"""The structures of a run: files, globs, folders, ASE databases or ``ase.Atoms``, each with a content key."""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import numpy as np

DATABASE_SUFFIXES = (".db",)
URL_PREFIXES = ("postgresql://", "postgres://", "mysql://", "mariadb://")


def structure_key(atoms) -> str:
    """sha256 (hex) of the structure's content: atomic numbers (int64), positions and cell (float64, Å), pbc."""
    digest = hashlib.sha256()
    for array in (
        np.asarray(atoms.numbers, dtype=np.int64),
        np.asarray(atoms.positions, dtype=np.float64),
        np.asarray(atoms.cell, dtype=np.float64),
        np.asarray(atoms.pbc, dtype=bool),
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def is_database(name) -> bool:
    return str(name).startswith(URL_PREFIXES) or Path(str(name)).suffix in DATABASE_SUFFIXES


def read_inputs(inputs, select: str | None = None, exclude=None) -> list[tuple[str, object]]:
    """(source, ase.Atoms) for every structure in ``inputs``: ``ase.Atoms`` objects, files ASE reads (every frame),
    globs, folders (every file in them, not recursive) and ASE databases (``.db`` files or URLs; rows matching the
    ASE selection ``select``). ``exclude``: a path to leave out (the results database). A missing or unreadable
    input is a ``ValueError`` naming it."""
    from ase import Atoms

    if isinstance(inputs, (str, Path, Atoms)):
        inputs = [inputs]
    exclude = Path(exclude).resolve() if exclude and not str(exclude).startswith(URL_PREFIXES) else None
    found = []
    for k, item in enumerate(inputs):
        if isinstance(item, Atoms):
            found.append((f"input[{k}]", item))
            continue
        if hasattr(item, "numbers") and hasattr(item, "to_atoms"):  # mtsim.Structure
            found.append((f"input[{k}]", item.to_atoms()))
            continue
        for path in _expand(str(item)):
            if exclude is not None and not path.startswith(URL_PREFIXES) and Path(path).resolve() == exclude:
                continue
            found += _read_database(path, select) if is_database(path) else _read_file(path)
    if not found:
        raise ValueError(f"no structures in {[str(i) for i in inputs]}")
    return found


def _expand(item: str) -> list[str]:
    if item.startswith(URL_PREFIXES):
        return [item]
    path = Path(item)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"folder {item} holds no files")
        return files
    if path.exists():
        return [item]
    matches = sorted(glob.glob(item))
    if not matches:
        raise ValueError(f"input {item} does not exist (and matches no file as a glob)")
    return [m for match in matches for m in _expand(match)]


def _read_file(path: str) -> list:
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types for unreadable files
        raise ValueError(f"cannot read {path}: {err}") from None
    if not frames:
        raise ValueError(f"{path} holds no structures")
    return [(f"{path}@{k}" if len(frames) > 1 else path, atoms) for k, atoms in enumerate(frames)]


def _read_database(name: str, select: str | None) -> list:
    import ase.db

    try:
        with ase.db.connect(name) as db:
            rows = [(f"{name}@id={row.id}", row.toatoms()) for row in db.select(select)]
    except Exception as err:  # noqa: BLE001 - a bad database or selection, named
        raise ValueError(f"cannot read the ASE database {name} (selection {select!r}): {err}") from None
    return rows
