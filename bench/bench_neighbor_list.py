"""Time mtsim.kernels.neighbor_list against vesin and ASE.

Random positions in a periodic, slightly triclinic cell at 0.08 atoms/Å^3 (about
the density of metals and oxides), cutoff 5 Å, full lists with shifts ('ijS', no
self edges). mtsim and vesin run in turn (the order reversed every round), ``--repeats``
times each after a warm-up call, then ASE on its own (a call of ASE's slows whichever
library runs next about twofold, at 10^3 atoms); prints the median and min-max wall
time of each and the ratio of medians to mtsim. Usage::

    python bench/bench_neighbor_list.py [--sizes 1000 10000 100000] [--repeats 7]
        [--ase-max-atoms 10000] [--threads N]
"""

import argparse
import statistics
import time

import numpy as np
from timing import alternating


def make_structure(n_atoms, density=0.08, seed=0):
    rng = np.random.default_rng(seed)
    length = (n_atoms / density) ** (1 / 3)
    cell = length * np.array([[1.0, 0.0, 0.0], [0.1, 1.0, 0.0], [0.05, -0.1, 1.0]])
    return rng.random((n_atoms, 3)) @ cell, cell


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--ase-max-atoms", type=int, default=10000, help="skip ASE above this size (slow)")
    parser.add_argument("--threads", type=int, default=0, help="threads for mtsim and vesin (0: all cores)")
    args = parser.parse_args()

    import numba
    import vesin
    from ase import Atoms
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    from mtsim.kernels import neighbor_list

    if args.threads:
        numba.set_num_threads(args.threads)
    print(f"numba threads: {numba.get_num_threads()} ({numba.threading_layer() if numba.get_num_threads() else ''})")

    start = time.perf_counter()
    neighbor_list(np.zeros((1, 3)), np.eye(3), True, 1.0)
    print(f"mtsim first call (compile or load numba cache): {time.perf_counter() - start:.2f} s\n")

    header = (
        f"{'atoms':>7} {'pairs':>9} | {'library':<7} {'median ms':>10} {'min-max ms':>17} {'x mtsim':>8} {'us/atom':>8}"
    )
    print(header)
    print("-" * len(header))
    for n_atoms in args.sizes:
        positions, cell = make_structure(n_atoms)
        pbc = np.array([True, True, True])
        calculator = vesin.NeighborList(cutoff=args.cutoff, full_list=True, n_threads=args.threads)
        times, results = alternating(
            {
                "mtsim": lambda: neighbor_list(positions, cell, pbc, args.cutoff, self_interaction=False),
                "vesin": lambda: calculator.compute(positions, cell, pbc, quantities="ijS"),
            },
            args.repeats,
        )
        if n_atoms <= args.ase_max_atoms:  # on its own: a call of ASE's slows whichever library runs next
            atoms = Atoms(numbers=np.ones(n_atoms, int), positions=positions, cell=cell, pbc=True)
            ase_times, ase_results = alternating(
                {"ase": lambda: ase_neighbor_list("ijS", atoms, args.cutoff)}, args.repeats
            )
            times.update(ase_times)
            results.update(ase_results)
        n_pairs = {library: len(result[0]) for library, result in results.items()}
        reference = statistics.median(times["mtsim"])
        for library in times:
            median = statistics.median(times[library])
            print(
                f"{n_atoms:>7} {n_pairs[library]:>9} | {library:<7} {1e3 * median:>10.2f} "
                f"{1e3 * min(times[library]):>8.2f}-{1e3 * max(times[library]):<8.2f} {median / reference:>8.2f} "
                f"{1e6 * median / n_atoms:>8.3f}"
            )
        if n_atoms > args.ase_max_atoms:
            print(f"{n_atoms:>7} {'':>9} | {'ase':<7} {'skipped (> --ase-max-atoms)':>37}")


if __name__ == "__main__":
    main()
