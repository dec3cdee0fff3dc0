"""The results database of ``mtsim run``: an ASE database (SQLite file, or PostgreSQL by a ``postgresql://`` URL),
one row per (structure, task, options), written by the driver process only.

Every row's key-value pairs are :data:`COLUMNS` (``error`` only on failed rows) and the task's own summary scalars;
its ``data`` holds the task's arrays; its atoms are the task's output structure (relaxed cell, last MD frame) when
it has one and the input structure otherwise. The schema is documented in ``docs/workflows.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

COLUMNS = {
    "structure_key": "sha256 of the input structure (numbers, positions, cell, pbc; mtsim.workflows.structure_key)",
    "task": "task name (predict, relax, phonon, md, ...)",
    "options_hash": "sha256 of the canonical JSON of the task name, its options and the model file's sha256",
    "options": "the task options, canonical JSON",
    "status": "done or failed",
    "source": "where the input came from (file, file@frame, database@id=N, input[k])",
    "model": "the model's name (ONNX metadata model_name)",
    "model_sha256": "sha256 of the ONNX model file the workers loaded (the file, not the training checkpoint)",
    "model_checkpoint_sha256": "the model metadata's source_checkpoint_sha256 (only where the file records it)",
    "mtsim_version": "mtsim.__version__ of the driver",
    "seconds": "worker wall time for this structure, s (a batched call's time shared equally)",
}
"""Key-value pairs of every row, with their meaning."""
FAILED_COLUMNS = {"error": "the exception, as 'Type: message' (failed rows only)"}


def options_hash(task: str, options: dict, model_sha256: str) -> str:
    """sha256 (hex) identifying a computation apart from its structure."""
    text = json.dumps({"task": task, "options": options, "model_sha256": model_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What every row of one run shares."""

    task: str
    options: dict
    options_hash: str
    model: str
    model_sha256: str
    mtsim_version: str
    model_checkpoint_sha256: str | None = None

    def columns(self) -> dict:
        columns = {
            "task": self.task,
            "options_hash": self.options_hash,
            "options": json.dumps(self.options, sort_keys=True),
            "model": self.model,
            "model_sha256": self.model_sha256,
            "mtsim_version": self.mtsim_version,
        }
        if self.model_checkpoint_sha256:
            columns["model_checkpoint_sha256"] = self.model_checkpoint_sha256
        return columns


def connect(name):
    """The ASE database ``name`` (created if absent); a PostgreSQL URL needs the ``ase-db-backends`` package."""
    import ase.db

    try:
        return ase.db.connect(name, append=True)
    except ImportError as err:
        raise ImportError(
            f"{name}: ASE's PostgreSQL backend needs `pip install 'mtsim[distributed]'` "
            f"(ase-db-backends, psycopg2-binary): {err}"
        ) from None


def existing_rows(db, identity: RunIdentity) -> dict[str, tuple[int, str]]:
    """structure_key -> (row id, status) of the rows of this task and options hash."""
    rows = {}
    for row in db.select(task=identity.task, options_hash=identity.options_hash, include_data=False):
        key = row.key_value_pairs["structure_key"]
        if key in rows:
            raise RuntimeError(
                f"the database holds two rows for structure {key} ({rows[key][0]} and {row.id}): "
                "it was written by something other than one mtsim run at a time"
            )
        rows[key] = (row.id, row.key_value_pairs["status"])
    return rows


def write_outcomes(db, identity: RunIdentity, outcomes, structures: dict, replace: dict[str, int]) -> None:
    """Write one row per outcome in one transaction (all or none); rows in ``replace`` (structure_key -> id, the
    failed rows being retried) are deleted in the same transaction. ``structures``: structure_key -> (source,
    input ase.Atoms)."""
    with db:
        stale = [replace[o.key] for o in outcomes if o.key in replace]
        if stale:
            db.delete(stale)
        for o in outcomes:
            source, atoms = structures[o.key]
            columns = {
                **identity.columns(),
                "structure_key": o.key,
                "status": o.status,
                "source": source,
                "seconds": float(o.seconds),
            }
            if o.status == "done":
                columns.update(o.result.summary)
                out = o.result.structure
                row_atoms = atoms if out is None else (out.to_atoms() if hasattr(out, "to_atoms") else out)
                db.write(row_atoms, key_value_pairs=columns, data=o.result.data)
            else:
                db.write(atoms, key_value_pairs={**columns, "error": o.error})
