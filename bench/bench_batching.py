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


def lists() -> dict[str, list]:
    si = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)
    si216 = bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 3)
    out = {"256 x CH4": [], "64 x H2O": [], "32 x Si64 (rattled)": [], "3 x (Cu256 + Si216)": [cu, si216] * 3}
    for k in range(256):
        for name, formula, count in (("256 x CH4", "CH4", 256), ("64 x H2O", "H2O", 64)):
            if k < count:
                m = molecule(formula)
                m.center(vacuum=4.0)
                m.rattle(0.02, seed=k)
                out[name].append(m)
    for k in range(32):
        s = si.copy()
        s.rattle(0.05, seed=k)
        out["32 x Si64 (rattled)"].append(s)
    return out


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
