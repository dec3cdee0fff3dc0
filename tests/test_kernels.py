"""Tests of mtsim.kernels: CPU neighbour list vs ASE and vesin, order, batching, skin
list, input validation, and the CUDA kernel on the CUDA simulator (subprocess)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mtsim.kernels import NeighborList, batched_neighbor_list, neighbor_list

try:
    import vesin
except ImportError:  # optional reference implementation (test extra)
    vesin = None


def random_cell(rng, length, skew):
    """Random triclinic cell: ``length`` * (identity + skew * noise), det > 0."""
    while True:
        cell = length * (np.eye(3) + skew * rng.uniform(-1.0, 1.0, (3, 3)))
        if np.linalg.det(cell) > 0.05 * length**3:
            return cell


def make_structure(kind, seed):
    """``(positions, cell, pbc, cutoff)`` of a random test structure."""
    rng = np.random.default_rng(seed)
    if kind == "one_atom_small_cell":  # 1 atom, 2 Å lattice vectors, cutoff 5 Å: many images
        cell = random_cell(rng, 2.0, 0.2)
        return rng.uniform(-1, 1, (1, 3)), cell, np.array([True] * 3), 5.0
    if kind == "tiny_triclinic":
        cell = random_cell(rng, rng.uniform(2.0, 4.0), 0.4)
        n = int(rng.integers(1, 5))
        return rng.random((n, 3)) @ cell, cell, np.array([True] * 3), rng.uniform(3.0, 6.0)
    if kind == "skewed":  # nearly flat cell: heights much smaller than vector lengths
        cell = np.array([[6.0, 0.0, 0.0], [5.7, 1.2, 0.0], [5.5, 1.0, 1.3]])
        n = int(rng.integers(2, 8))
        return rng.random((n, 3)) @ cell, cell, np.array([True] * 3), rng.uniform(2.5, 4.5)
    if kind == "unwrapped":  # atoms several cells away from the home cell
        cell = random_cell(rng, 5.0, 0.3)
        n = 12
        return rng.uniform(-4, 4, (n, 3)) @ cell, cell, np.array([True] * 3), 4.0
    if kind == "slab":
        cell = random_cell(rng, 6.0, 0.2)
        n = 30
        positions = rng.random((n, 3)) @ cell
        positions[:, 2] = rng.uniform(-3.0, 15.0, n)  # also beyond the cell along z
        return positions, cell, np.array([True, True, False]), 4.0
    if kind == "molecule":
        n = int(rng.integers(2, 40))
        return rng.normal(0.0, 3.0, (n, 3)), np.zeros((3, 3)), np.array([False] * 3), 3.5
    if kind == "mixed_pbc":
        cell = random_cell(rng, 5.0, 0.3)
        pbc = rng.random(3) < 0.5
        k = rng.integers(3)
        pbc[k], pbc[(k + 1) % 3] = True, False  # at least one periodic, one not
        n = 25
        positions = rng.random((n, 3)) @ cell + rng.normal(0.0, 1.0, (n, 3))
        return positions, cell, pbc, rng.uniform(3.0, 5.0)
    if kind == "dense_2000":
        n = 2000
        cell = random_cell(rng, (n / 0.08) ** (1 / 3), 0.1)
        return rng.random((n, 3)) @ cell, cell, np.array([True] * 3), 5.0
    raise ValueError(kind)


CASES = (
    [("one_atom_small_cell", s) for s in range(3)]
    + [("tiny_triclinic", s) for s in range(4)]
    + [("skewed", s) for s in range(2)]
    + [("unwrapped", s) for s in range(2)]
    + [("slab", s) for s in range(3)]
    + [("molecule", s) for s in range(3)]
    + [("mixed_pbc", s) for s in range(4)]
    + [("dense_2000", 0)]
)


def edge_set(i, j, S):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(S).tolist())))


def assert_sorted(i, j, S):
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    assert np.array_equal(order, np.arange(len(i)))


@pytest.mark.parametrize("kind, seed", CASES)
def test_matches_ase(kind, seed):
    positions, cell, pbc, cutoff = make_structure(kind, seed)
    atoms = Atoms("H" * len(positions), positions=positions, cell=cell, pbc=pbc)
    for self_interaction in (True, False):
        i, j, S = neighbor_list(positions, cell, pbc, cutoff, self_interaction=self_interaction)
        assert i.dtype == j.dtype == S.dtype == np.int64 and S.shape == (len(i), 3)
        assert_sorted(i, j, S)
        assert np.all(S[:, ~pbc] == 0)
        d = np.linalg.norm(positions[j] - positions[i] + S @ cell, axis=1)
        assert np.all(d < cutoff)
        assert np.sum((i == j) & np.all(S == 0, axis=1)) == (len(positions) if self_interaction else 0)
        expected = ase_neighbor_list("ijS", atoms, cutoff, self_interaction=self_interaction)
        assert edge_set(i, j, S) == edge_set(*expected)


@pytest.mark.skipif(vesin is None, reason="vesin not installed")
@pytest.mark.parametrize("kind, seed", CASES)
def test_matches_vesin(kind, seed):
    positions, cell, pbc, cutoff = make_structure(kind, seed)
    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
    expected = edge_set(*calculator.compute(positions, cell, pbc, quantities="ijS"))  # no self edges
    assert edge_set(*neighbor_list(positions, cell, pbc, cutoff, self_interaction=False)) == expected


def test_order_is_deterministic():
    positions, cell, pbc, cutoff = make_structure("dense_2000", 1)
    first = neighbor_list(positions, cell, pbc, cutoff)
    second = neighbor_list(positions.copy(), cell.copy(), pbc.copy(), cutoff)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def test_one_atom_cell_images():
    """Cubic 1-atom cell with a = 2 Å, cutoff 5 Å: all lattice vectors shorter than 5 Å."""
    i, j, S = neighbor_list([[0.3, 0.1, 0.2]], 2.0 * np.eye(3), True, 5.0)
    expected = sorted(
        (a, b, c) for a in range(-3, 4) for b in range(-3, 4) for c in range(-3, 4) if 4 * (a * a + b * b + c * c) < 25
    )
    assert [tuple(s) for s in S.tolist()] == expected
    assert np.all(i == 0) and np.all(j == 0)


def test_lattice_distance_equal_to_cutoff_is_excluded():
    """|r| < cutoff is strict: second neighbours of a 2.5 Å simple cubic at exactly 5 Å."""
    i, j, S = neighbor_list([[0.7, 0.2, 1.1]], 2.5 * np.eye(3), True, 5.0, self_interaction=False)
    assert len(S) and np.all(np.sum(S * S, axis=1) < 4)


def test_pairs_at_exactly_the_cutoff_in_a_supercell():
    """4x4x4 simple cubic, a = 2 Å (exact floats), cutoff 4 Å = 2a: 26 neighbours each."""
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    positions, cell = 2.0 * grid, 8.0 * np.eye(3)
    i, j, S = neighbor_list(positions, cell, True, 4.0, self_interaction=False)
    assert np.array_equal(np.bincount(i), np.full(64, 26))
    d = np.linalg.norm(positions[j] - positions[i] + S @ cell, axis=1)
    assert np.allclose(np.sort(np.unique(d.round(9))), [2.0, 8**0.5, 12**0.5])


def test_float32_positions_and_list_inputs():
    positions, cell, pbc, cutoff = make_structure("slab", 7)
    reference = neighbor_list(positions.astype(np.float32).astype(np.float64), cell, pbc, cutoff)
    result = neighbor_list(positions.astype(np.float32), cell.tolist(), pbc.tolist(), cutoff)
    for a, b in zip(reference, result):
        assert np.array_equal(a, b)
    assert all(len(a) == 0 for a in neighbor_list(np.empty((0, 3)), cell, pbc, cutoff))


def test_batched_equals_per_structure():
    structures = [make_structure(kind, 11) for kind in ("molecule", "tiny_triclinic", "slab", "mixed_pbc")]
    cutoff = 4.0
    positions = np.concatenate([s[0] for s in structures])
    cells = np.stack([s[1] for s in structures])
    pbcs = np.stack([s[2] for s in structures])
    n_atoms = np.array([len(s[0]) for s in structures])
    i, j, S = batched_neighbor_list(positions, cells, pbcs, n_atoms, cutoff)

    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    parts = [neighbor_list(p, c, b, cutoff) for p, c, b, _ in structures]
    assert np.array_equal(i, np.concatenate([pi + o for (pi, _, _), o in zip(parts, offsets)]))
    assert np.array_equal(j, np.concatenate([pj + o for (_, pj, _), o in zip(parts, offsets)]))
    assert np.array_equal(S, np.concatenate([pS for _, _, pS in parts]))
    with pytest.raises(ValueError, match="n_atoms"):
        batched_neighbor_list(positions, cells, pbcs, n_atoms + 1, cutoff)


def within_cutoff(positions, cell, edges, cutoff):
    i, j, S = edges
    keep = np.linalg.norm(positions[j] - positions[i] + S @ cell, axis=1) < cutoff
    return edge_set(i[keep], j[keep], S[keep])


def test_skin_list_rebuilds_only_when_needed():
    rng = np.random.default_rng(3)
    n, cutoff, skin = 120, 4.0, 1.0
    cell = random_cell(rng, (n / 0.08) ** (1 / 3), 0.2)
    positions = rng.random((n, 3)) @ cell
    pbc = np.array([True, True, True])
    nl = NeighborList(cutoff, skin=skin)
    with pytest.raises(RuntimeError):
        nl.get()
    assert nl.update(positions, cell, pbc)

    for _ in range(3):  # moves below skin / 2: no rebuild, pairs within cutoff exact
        step = rng.normal(size=(n, 3))
        moved = positions + 0.45 * skin / 2 * step / np.linalg.norm(step, axis=1, keepdims=True)
        assert not nl.update(moved, cell, pbc)
        assert within_cutoff(moved, cell, nl.get(), cutoff) == edge_set(*neighbor_list(moved, cell, pbc, cutoff))

    moved = positions.copy()
    moved[5] += [0.6 * skin, 0.0, 0.0]
    assert nl.update(moved, cell, pbc) and nl.n_builds == 2
    assert not nl.update(moved, cell, pbc)
    strained = moved * 1.01  # affine strain of 1 %: every pair within cutoff is still listed
    assert not nl.update(strained, cell * 1.01, pbc)
    assert within_cutoff(strained, cell * 1.01, nl.get(), cutoff) == edge_set(
        *neighbor_list(strained, cell * 1.01, pbc, cutoff)
    )
    assert nl.update(moved * 0.75, cell * 0.75, pbc)  # compressed beyond what the skin covers
    assert nl.update(moved, cell * 1.001, [True, True, False])  # pbc changed
    assert nl.update(moved[:-1], cell * 1.001, [True, True, False])  # atom removed
    i, j, S = nl.get()
    assert edge_set(i, j, S) == edge_set(*neighbor_list(moved[:-1], cell * 1.001, [True, True, False], cutoff + skin))


@pytest.mark.parametrize(
    "positions, cell, pbc, cutoff, message",
    [
        ([[0.0, 0.0, np.nan]], np.eye(3), True, 2.0, "NaN"),
        ([[0.0, 0.0, 0.0]], np.diag([1.0, np.inf, 1.0]), True, 2.0, "NaN"),
        ([[0.0, 0.0]], np.eye(3), True, 2.0, "shape"),
        ([[0.0, 0.0, 0.0]], np.eye(2), True, 2.0, "shape"),
        ([[0.0, 0.0, 0.0]], np.eye(3), [True, False], 2.0, "pbc"),
        ([[0.0, 0.0, 0.0]], [[1, 0, 0], [2, 0, 0], [0, 0, 1]], True, 2.0, "singular"),
        ([[0.0, 0.0, 0.0]], [[1, 0, 0], [1, 1e-13, 0], [0, 0, 1]], [True, True, False], 2.0, "singular"),
        ([[0.0, 0.0, 0.0]], np.zeros((3, 3)), [False, True, False], 2.0, "singular"),
        ([[0.0, 0.0, 0.0]], np.eye(3), True, 0.0, "cutoff"),
        ([[0.0, 0.0, 0.0]], np.eye(3), True, -1.0, "cutoff"),
        (np.zeros((1, 3), np.complex128), np.eye(3), True, 2.0, "dtype"),
    ],
)
def test_bad_input_raises(positions, cell, pbc, cutoff, message):
    with pytest.raises(ValueError, match=message):
        neighbor_list(np.asarray(positions), cell, pbc, cutoff)


@pytest.mark.parametrize(
    "positions, cell, pbc, message",
    [
        ([[0.0, 0.0, 0.0]], np.eye(3) * 0.005, True, r"cell too small for the cutoff .*e\+(09|10) periodic images"),
        ([[0.0, 0.0, 0.0]], np.diag([3.0, 3.0, 1e-6]), [False, False, True], "cell too small"),
        ([[0.0, 0.0, 0.0], [3e12, 0.0, 0.0]], np.eye(3) * 3.0, True, "1e\\+12 cells away .* lattice vector 0"),
        ([[0.0, 0.0, 0.0], [0.0, 0.0, -3e12]], np.eye(3) * 3.0, [True, True, False], "3e\\+12 Å .* direction 2"),
    ],
)
def test_absurd_cells_and_far_atoms_raise(positions, cell, pbc, message):
    """A cell far smaller than the cutoff and atoms 10^12 cells away: a ValueError naming the problem (numba's
    MemoryError or SystemError before)."""
    with pytest.raises(ValueError, match=message):
        neighbor_list(np.asarray(positions), cell, pbc, 5.0)
    with pytest.raises(ValueError, match=message):
        NeighborList(5.0, 0.5).update(np.asarray(positions), cell, pbc)


def test_singular_cell_only_matters_along_periodic_directions():
    cell = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    i, _, S = neighbor_list([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], cell, [True, True, False], 3.5, False)
    assert len(i) and np.all(S[:, 2] == 0)


CUDA_SIMULATOR_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from numba import cuda
    from mtsim.kernels import cuda_available, neighbor_list
    from mtsim.kernels.cuda import _exclusive_scan, neighbor_list_cuda
    from test_kernels import make_structure

    assert cuda_available()
    cases = [("one_atom_small_cell", 0), ("tiny_triclinic", 1), ("skewed", 0), ("unwrapped", 1),
             ("slab", 0), ("molecule", 2), ("mixed_pbc", 0), ("mixed_pbc", 3)]
    structures = [make_structure(kind, seed) for kind, seed in cases]
    grid = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    structures.append((2.0 * grid, 6.0 * np.eye(3), np.array([True] * 3), 4.0))  # pairs at exactly 4 Å
    for k, (positions, cell, pbc, cutoff) in enumerate(structures):
        self_interaction = k % 2 == 0
        expected = neighbor_list(positions, cell, pbc, cutoff, self_interaction)
        got = neighbor_list_cuda(positions, cell, pbc, cutoff, self_interaction)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got)), (positions, cell, pbc)
        if k < 2:  # device arrays in and out
            on_device = neighbor_list_cuda(cuda.to_device(positions), cell, pbc, cutoff, self_interaction, True)
            assert all(np.array_equal(a, b.copy_to_host()) for a, b in zip(expected, on_device))
    for size in (0, 1, 128, 129, 600):  # the chunked prefix sum, with and without recursion
        values = np.random.default_rng(size).integers(0, 50, size)
        prefix = _exclusive_scan(cuda.to_device(values)).copy_to_host()
        assert np.array_equal(prefix, np.concatenate([[0], np.cumsum(values)]))
    try:
        neighbor_list_cuda(cuda.to_device(np.full((2, 3), np.nan)), np.eye(3), True, 2.0)
    except ValueError as error:
        assert "NaN" in str(error)
    else:
        raise AssertionError("NaN positions accepted")
    print("CUDA_SIMULATOR_OK")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda not installed")
def test_cuda_kernel_on_simulator_equals_cpu():
    environment = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    python_path = [os.path.dirname(__file__), environment.get("PYTHONPATH")]
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, python_path))
    result = subprocess.run(
        [sys.executable, "-c", CUDA_SIMULATOR_SCRIPT], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "CUDA_SIMULATOR_OK" in result.stdout, result.stderr[-4000:]


BROKEN_CUDA_SCRIPT = textwrap.dedent(
    """
    import warnings
    import mtsim.kernels.cuda
    from mtsim.kernels import cuda_available

    def broken(*args, **kwargs):
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")  # seen with numba-cuda on numpy 2.5

    mtsim.kernels.cuda.neighbor_list_cuda = broken
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not cuda_available()
    assert any("CUDA neighbour-list kernel does not run here" in str(w.message) for w in caught), caught
    print("BROKEN_CUDA_OK")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda not installed")
def test_a_cuda_kernel_that_fails_is_reported_and_not_used():
    environment = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_CUDA_SCRIPT], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "BROKEN_CUDA_OK" in result.stdout, result.stderr[-4000:]
