"""Inference speed: the SDK (onnxruntime, neighbour list included) vs PyTorch eager on the same weights.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 python bench/bench_inference.py [--sizes 64 512 4096]

Both sides evaluate every head (energy, forces, stress, magmoms, charges, Z*, eps) of the 1M preset in float32 on
the same rattled diamond-Si cell and include building the neighbour list. Prints the median and min–max of
repeated calls (SDK and eager alternating) and the ratio SDK/eager measured in the same run (< 1: the SDK is
faster). The allocator settings are printed with the table because they change eager's times a lot at large
sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import numpy as np
import torch
from ase.build import bulk
from timing import alternating

import mtsim
from mtsim.graph import build_graph
from mtsim.training import build_model, export


def cell_of(n_atoms: int):
    k = max(1, round((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (k, k, k)
    atoms.rattle(0.05, seed=0)
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = build_model("1M", dtype=torch.float32, seed=0).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.onnx")
        export(model, path, precision="float32")
        sdk = mtsim.load(path, device="cpu")

        def eager(atoms):
            graph = build_graph([atoms], model.config.cutoff, dtype=np.float32)
            with torch.enable_grad():
                out = model(**{k: torch.from_numpy(v) for k, v in graph.items()})
            return {k: v.detach().numpy() for k, v in out.items()}

        allocator = {k: os.environ.get(k, "unset") for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
        print(f"torch threads {torch.get_num_threads()}, allocator {allocator}")
        print(
            f"{'atoms':>6} {'edges':>8} {'SDK median (min-max) s':>26} {'eager median (min-max) s':>28} "
            f"{'SDK/eager':>10}"
        )
        for n in args.sizes:
            atoms = cell_of(n)
            edges = build_graph([atoms], 5.0)["shifts"].shape[0]
            times, _ = alternating({"sdk": lambda: sdk.predict(atoms), "eager": lambda: eager(atoms)}, args.repeats)
            t_sdk, t_eager = times["sdk"], times["eager"]
            m_sdk, m_eager = statistics.median(t_sdk), statistics.median(t_eager)
            print(
                f"{len(atoms):>6} {edges:>8} {m_sdk:>10.3f} ({min(t_sdk):.3f}-{max(t_sdk):.3f}) "
                f"{m_eager:>12.3f} ({min(t_eager):.3f}-{max(t_eager):.3f}) {m_sdk / m_eager:>10.2f}"
            )


if __name__ == "__main__":
    main()
