"""Peak memory of SDK single points, and the batcher's budget.

    python bench/bench_memory.py [--model FILE] [--sizes 1000 10000] [--budget-gib 2]

Each measurement runs in a fresh process: load the model, build the graph once (the neighbour-list kernel's
compilation has its own peak), note the resident set size (RSS), reset the kernel's high-water mark
(``/proc/self/clear_refs``), predict twice (a second call of the same shape, as in MD) and report the peak RSS of
the calls (``VmHWM``) above the RSS before them, per atom, per edge and per edge slot (the model's layout: atoms
times the largest neighbour count + 1), beside ``Model.estimate_bytes``. The single-point target is a 10^4-atom
float32 structure within 12 GiB. Then a list of 512-atom structures is predicted with a ``memory_budget`` of
``--budget-gib``, given at load (onnxruntime's CPU arena off) and, for comparison, set after loading (arena on):
its peak must stay below the budget. Structures: rattled diamond Si (29 edges per atom within 5 Å, self edges
included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

GIB = 2**30
WORKER = r"""
import json, sys, time
import numpy as np
from ase.build import bulk
import mtsim
from mtsim.graph import build_graph, slot_count

def status(key):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key + ":"))

model_path, n_atoms, copies, budget, keep_arena = json.loads(sys.argv[1])
model = mtsim.load(model_path, device="cpu", memory_budget=None if keep_arena else budget)
k = max(1, round((n_atoms / 8) ** (1 / 3)))
atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (k, k, k)
atoms.rattle(0.02, seed=0)
graph = build_graph([atoms], model.cutoff)
edges, slots = int(graph["edge_index"].shape[1]), slot_count(graph)
estimate = model.estimate_bytes(slots)
model.memory_budget = budget  # set after loading (keep_arena): onnxruntime's CPU arena stays on
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # VmHWM := VmRSS
start = time.perf_counter()
for _ in range(1 if copies > 1 else 2):
    model.predict([atoms] * copies if copies > 1 else atoms)
seconds = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"atoms": len(atoms), "edges": edges, "slots": slots, "estimate": estimate, "before": before,
                  "peak": peak, "seconds": seconds}))
"""


def measure(model, n_atoms: int, copies: int = 1, budget: float | None = None, keep_arena: bool = False) -> dict:
    arguments = json.dumps([model, n_atoms, copies, budget, keep_arena])
    done = subprocess.run([sys.executable, "-c", WORKER, arguments], capture_output=True, text=True)
    if done.returncode != 0:
        return {"atoms": n_atoms, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="ONNX model file (default: the bundled model)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--budget-gib", type=float, default=2.0)
    parser.add_argument("--copies", type=int, default=24, help="512-atom structures in the batcher test")
    args = parser.parse_args()

    print("single points, two calls (peak RSS of the calls above the RSS before them)")
    print(
        f"{'atoms':>7} {'edges':>8} {'slots':>8} {'peak GiB':>9} {'kB/atom':>8} {'kB/edge':>8} {'kB/slot':>8} "
        f"{'estimate GiB':>13} {'<= 12 GiB':>10}"
    )
    for n in args.sizes:
        r = measure(args.model, n)
        if "error" in r:
            print(f"{n:>7} failed: {r['error']}")
            continue
        used = r["peak"] - r["before"]
        fits = "yes" if r["peak"] <= 12 * GIB else "NO"
        print(
            f"{r['atoms']:>7} {r['edges']:>8} {r['slots']:>8} {used / GIB:9.2f} {used / r['atoms'] / 1e3:8.1f} "
            f"{used / r['edges'] / 1e3:8.1f} {used / r['slots'] / 1e3:8.1f} {r['estimate'] / GIB:13.2f} {fits:>10}"
        )

    budget = args.budget_gib * GIB
    print(
        f"\nbatcher: {args.copies} x 512 atoms with memory_budget = {args.budget_gib:g} GiB "
        f"(allocator: {allocator_settings()})"
    )
    print(f"{'budget given':>22} {'peak GiB':>9} {'within':>7} {'seconds':>8}")
    times = {}
    for keep_arena, label in ((False, "at load (arena off)"), (True, "after load (arena on)")):
        r = measure(args.model, 512, copies=args.copies, budget=budget, keep_arena=keep_arena)
        if "error" in r:
            print(f"{label:>22} failed: {r['error']}")
            continue
        used = r["peak"] - r["before"]
        times[keep_arena] = r["seconds"]
        print(f"{label:>22} {used / GIB:9.2f} {'yes' if used <= budget else 'NO':>7} {r['seconds']:8.2f}")
    if len(times) == 2:
        print(
            f"arena off / arena on time: {times[False] / times[True]:.2f}; one structure's estimate "
            f"{r['estimate'] / GIB:.2f} GiB"
        )


def allocator_settings() -> str:
    import os

    return ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"))


if __name__ == "__main__":
    main()
