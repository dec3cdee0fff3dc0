"""Throughput of ``mtsim run`` (mtsim.workflows on a Dask LocalCluster) against a plain Python loop over the SDK.

For predict and phonon: the plain loop (model loaded once, results kept in memory), then ``workflows.run`` with 1
and 2 worker processes, each timed twice: end to end (cluster start, model load on the workers, database writes)
and warm (a cluster already running with the model loaded: the per-structure cost of the machinery). Ratios are
measured in the same run. Usage: ``python bench/bench_workflows.py [--predict 200] [--phonon 20]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from ase.build import bulk

import mtsim
from mtsim import workflows
from mtsim.workflows.tasks import phonon

PHONON_OPTIONS = {"supercell": [4, 4, 4], "mesh": [8, 8, 8], "npoints": 11, "relax": False}


def structures(n: int, phonons: bool = False) -> list:
    """``n`` distinct, a little strained (0.02 % per index) NaCl, MgO and Si cells: rattled 8-atom cubic cells, or
    for phonons the 2-atom primitive cells unrattled (full symmetry: 2-3 displacements each)."""
    prototypes = [("NaCl", "rocksalt", 5.64), ("MgO", "rocksalt", 4.21), ("Si", "diamond", 5.43)]
    out = []
    for k in range(n):
        name, kind, a = prototypes[k % 3]
        atoms = bulk(name, kind, a=a * (1 + 0.0002 * k), cubic=not phonons)
        if not phonons:
            atoms.rattle(0.02, seed=k)
        out.append(atoms)
    return out


def plain_loop(task: str, items: list, threads: int) -> float:
    model = mtsim.load(device="cpu", threads=threads)
    model.predict(items[0])  # compile the neighbour-list kernels, as a worker's first task does
    start = time.perf_counter()
    if task == "predict":
        results = [model.predict(a) for a in items]
    else:
        results = [phonon(model, a, **PHONON_OPTIONS) for a in items]
    assert len(results) == len(items)
    return time.perf_counter() - start


def workflow(task: str, items: list, workers: int, folder: str) -> tuple[float, float]:
    """(end-to-end seconds, warm seconds) of ``workflows.run`` on ``workers`` processes."""
    from distributed import Client, LocalCluster

    options = PHONON_OPTIONS if task == "phonon" else None
    start = time.perf_counter()
    summary = workflows.run(
        task, items, os.path.join(folder, f"{task}-{workers}-cold.db"), workers=workers, options=options, progress=False
    )
    cold = time.perf_counter() - start
    assert summary.done == len(items), summary.table()
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            workflows.run(
                task,
                items[:4],
                os.path.join(folder, "warmup.db"),
                client=client,
                threads=threads,
                options=options,
                progress=False,
            )
            start = time.perf_counter()
            summary = workflows.run(
                task,
                items,
                os.path.join(folder, f"{task}-{workers}-warm.db"),
                client=client,
                threads=threads,
                options=options,
                progress=False,
            )
            warm = time.perf_counter() - start
    assert summary.done == len(items), summary.table()
    return cold, warm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict", type=int, default=200, help="structures for predict (0: skip)")
    parser.add_argument("--phonon", type=int, default=20, help="structures for phonon (0: skip)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; phonon options {PHONON_OPTIONS}")
    print(f"{'task':8} {'n':>4} {'runner':28} {'seconds':>8} {'per structure':>14} {'vs loop':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for task, n in (("predict", args.predict), ("phonon", args.phonon)):
            if n == 0:
                continue
            items = structures(n, phonons=task == "phonon")
            loop = plain_loop(task, items, cores)
            print(f"{task:8} {n:4d} {'plain loop (SDK)':28} {loop:8.2f} {1e3 * loop / n:11.1f} ms {1.0:8.2f}")
            for workers in (1, 2):
                cold, warm = workflow(task, items, workers, folder)
                for label, seconds in (
                    (f"mtsim run, {workers} worker(s), warm", warm),
                    (f"mtsim run, {workers} worker(s), cold", cold),
                ):
                    print(
                        f"{task:8} {n:4d} {label:28} {seconds:8.2f} {1e3 * seconds / n:11.1f} ms {seconds / loop:8.2f}"
                    )


if __name__ == "__main__":
    main()
