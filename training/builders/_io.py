"""Small helpers shared by the data-set builders: structure ids, hashes, manifests, progress output."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import ase.io
import numpy as np


def structure_id(atoms, decimals: int = 4) -> str:
    """A content hash of a structure (species, cell, wrapped fractional positions, rounded to ``decimals``):
    the same crystal written twice gets the same id, so splits by id keep duplicates together."""
    frac = np.round(np.mod(atoms.get_scaled_positions(wrap=False), 1.0), decimals) % 1.0
    parts = (
        np.asarray(atoms.numbers, np.int64).tobytes(),
        np.round(np.asarray(atoms.cell[:], np.float64), decimals).tobytes(),
        (frac + 0.0).tobytes(),
    )  # + 0.0 turns -0.0 into 0.0
    return hashlib.sha1(b"|".join(parts)).hexdigest()[:16]


def list_sha256(items) -> str:
    """Hash of a list of strings (order matters): a short fingerprint of a split."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def write_frames(path: str | os.PathLike, frames) -> None:
    """Write ``frames`` as extxyz, atomically: an interrupted write leaves the old file whole."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ase.io.write(path + ".tmp", list(frames), format="extxyz")
    os.replace(path + ".tmp", path)


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(manifest, handle, indent=1, default=_json_default)
        handle.write("\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


class Progress:
    """Progress lines on stderr: ``[name] done/total (rate)``, at most every ``every`` seconds."""

    def __init__(self, name: str, total: int, every: float = 2.0, quiet: bool = False):
        self.name, self.total, self.every, self.quiet = name, total, every, quiet
        self.start = self.last = time.perf_counter()

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if self.quiet or (not force and now - self.last < self.every and done < self.total):
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else float("nan")
        print(f"[{self.name}] {done}/{self.total}  {elapsed:.1f} s  ({rate:.2f}/s)", file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
