"""Lists of structures on the CPU: ``Model.predict(list)`` under several slot budgets per call vs one by one.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 python bench/bench_batching.py [--repeats 3]

``mtsim.model.CPU_SLOT_BUDGET`` bounds the edge slots of one call on the CPU (atoms x (largest receiver count + 1),
padding included); "atoms only" leaves just the 2,048-atom bound (as on a GPU). Prints the best of ``--repeats``
seconds per list and, in brackets, the ratio to one by one (``batch_size=1``) measured in the same run.
"""

from __future__ import annotations

import argparse
import time

from ase.build import bulk, molecule

import mtsim
import mtsim.model

BUDGETS = {"1,024": 1024, "2,048": 2048, "4,096": 4096, "8,192": 8192, "16,384": 16384, "atoms only": None}


def rattled(atoms, count: int, amplitude: float) -> list:
    copies = [atoms.copy() for _ in range(count)]
    for seed, copy in enumerate(copies):
        copy.rattle(amplitude, seed=seed)
    return copies


def lists() -> dict[str, list]:
    methane, water = molecule("CH4"), molecule("H2O")
    for m in (methane, water):
        m.center(vacuum=4.0)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    return {
        "256 x CH4": rattled(methane, 256, 0.02),
        "64 x H2O": rattled(water, 64, 0.02),
        "32 x Si64 (rattled)": rattled(si * (2, 2, 2), 32, 0.05),
        "3 x (Cu256 + Si216)": [cu, si * (3, 3, 3)] * 3,
    }


def best(model, items, repeats: int, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(items, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = mtsim.load(device="cpu")
    print(f"{'list':<22}{'one by one s':>14}" + "".join(f"{name:>18}" for name in BUDGETS))
    for name, items in lists().items():
        model.predict(items[:4])  # warm-up
        alone = best(model, items, args.repeats, batch_size=1)
        cells = []
        for budget in BUDGETS.values():
            mtsim.model.CPU_SLOT_BUDGET = budget
            t = best(model, items, args.repeats)
            cells.append(f"{t:.3f} ({t / alone:.2f})")
        print(f"{name:<22}{alone:>14.3f}" + "".join(f"{cell:>18}" for cell in cells))


if __name__ == "__main__":
    main()
