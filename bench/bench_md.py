"""MD step overhead: a full MD step vs the bare model call, on the same model and structure in the same run.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 python bench/bench_md.py [--model FILE] [--atoms 512]

A full step is ``Simulation.run``: the integrator (NVE velocity Verlet or Nosé–Hoover chain), the skin neighbour
list (check every step, rebuild when an atom moved more than half the skin), the model call, the force checks and
a CSV log line every 10 steps. The bare call is ``Model.evaluate`` on prebuilt inputs of the same structure. Each
is timed over ``--steps`` steps, ``--repeats`` times, the two alternating; the table shows the median (min-max)
time per step and the ratio step/bare of the medians (target: <= 1.05). Structure: rattled diamond Si at 300 K,
1 fs steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from ase.build import bulk

import mtsim
from mtsim.graph import graph_inputs
from mtsim.md import Simulation, make_integrator


def silicon(n_atoms: int):
    k = max(1, round((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (k, k, k)
    atoms.rattle(0.02, seed=0)
    return atoms


def per_step(function, steps: int, repeats: int) -> list[float]:
    """Seconds per step of ``function(steps)``, one value per repeat."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(steps)
        times.append((time.perf_counter() - start) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="ONNX model file (default: the bundled model)")
    parser.add_argument("--atoms", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = mtsim.load(args.model, device="cpu")
    atoms = silicon(args.atoms)
    allocator = {k: os.environ.get(k, "unset") for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    print(
        f"model {model.path.name} ({model.precision}), {len(atoms)} Si atoms, {args.steps} steps x "
        f"{args.repeats} repeats, allocator {allocator}"
    )
    print(
        f"{'ensemble':>9} {'step median (min-max) ms':>26} {'bare median (min-max) ms':>26} {'step/bare':>10} "
        f"{'builds':>9}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for ensemble in ("nve", "nvt-nh"):
            sim = Simulation(model, atoms, make_integrator(ensemble, 1.0, 300.0), temperature=300.0, seed=0)
            sim.run(5)  # warm-up
            log = os.path.join(folder, f"{ensemble}.csv")
            i, j, shifts, _, _ = sim.potential.edges(sim.state)
            inputs = graph_inputs(sim.state.numbers, sim.state.positions, sim.state.cell, i, j, shifts, model.dtype)

            def bare(n):
                for _ in range(n):
                    model.evaluate(inputs)

            step_times, bare_times = [], []
            for _ in range(args.repeats):  # interleaved: fair under the machine's fluctuating load
                step_times += per_step(lambda n: sim.run(n, log=log, interval=10, overwrite=True), args.steps, 1)
                bare_times += per_step(bare, args.steps, 1)
            step, base = statistics.median(step_times), statistics.median(bare_times)
            print(
                f"{ensemble:>9} {1e3 * step:9.1f} ({1e3 * min(step_times):.1f}-{1e3 * max(step_times):.1f})"
                f"{'':>6} {1e3 * base:9.1f} ({1e3 * min(bare_times):.1f}-{1e3 * max(bare_times):.1f}){'':>6} "
                f"{step / base:10.3f} {sim.potential.neighbors.n_builds:9d}"
            )


if __name__ == "__main__":
    main()
