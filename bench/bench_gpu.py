"""GPU benchmark: the SDK on onnxruntime's CUDA provider vs PyTorch CUDA eager on the same weights.

    python bench/bench_gpu.py [--sizes 256 2048 16384] [--model FILE.float32.onnx --checkpoint FILE.pt]

Needs a CUDA GPU, onnxruntime-gpu, numba-cuda and torch with CUDA (never run by CI). Prints:
1. where onnxruntime placed every node of the graph (from its profile; any node on the CPU provider is listed);
2. per size (rattled diamond Si, float32, every head): one model evaluation with the inputs already on the GPU
   (PyTorch eager; onnxruntime IOBinding) and through the SDK from numpy (host copies and edge slots included),
   medians and min-max of repeated runs, the ratio eager/SDK (> 1: the SDK is faster) and atom-steps per second;
3. one SDK MD step (NVE, skin list, CUDA neighbour list on rebuilds) and the bare SDK evaluation it wraps;
4. the Numba CUDA neighbour list against the CPU kernel.
MatterSim v1 (compiled, A100) reports 21.6 ms per step for 256 atoms, i.e. 11,852 atom-steps/s.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from ase.build import bulk

import mtsim
from mtsim.graph import build_graph
from mtsim.md import NVE, MDState, ModelPotential
from mtsim.training import load_checkpoint

MATTERSIM_MS_PER_STEP_256 = 21.6
REPEATS = {256: 50, 2048: 20, 16384: 10}


def si_cell(n_atoms: int):
    """Rattled diamond Si with ``n_atoms`` = 8 * k * k * k/2 (256, 2048, 16384) or 8 * k^3 atoms."""
    for k in range(1, 64):
        for reps in ((k, k, k), (k, k, k // 2)):
            if reps[2] and 8 * reps[0] * reps[1] * reps[2] == n_atoms:
                atoms = bulk("Si", "diamond", a=5.43, cubic=True) * reps
                atoms.rattle(0.05, seed=0)
                return atoms
    raise ValueError(f"no diamond supercell of {n_atoms} atoms")


def timed(function, repeats: int, sync=torch.cuda.synchronize) -> list[float]:
    function()
    function()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    return f"{1e3 * statistics.median(times):9.2f} ({1e3 * min(times):.2f}-{1e3 * max(times):.2f})"


def placement(model_path: str) -> None:
    """Count the graph's nodes per execution provider from an onnxruntime profile of one evaluation."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        options.log_severity_level = 3
        options.enable_mem_reuse = False  # as mtsim.Model does on a GPU
        session = ort.InferenceSession(
            model_path, options, providers=[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
        )
        print(f"onnxruntime {ort.__version__}, session providers {session.get_providers()}")
        graph = build_graph([si_cell(256)], 5.0, dtype=np.float32)
        session.run(None, {i.name: graph[i.name] for i in session.get_inputs()})
        session.end_profiling()
        events = json.load(open(glob.glob(os.path.join(folder, "profile*.json"))[0]))
    nodes = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            nodes[event["name"].removesuffix("_kernel_time")] = (args["provider"], args.get("op_name", "?"))
    counts = collections.Counter(provider for provider, _ in nodes.values())
    print(f"nodes executed per provider: {dict(counts)}")
    on_cpu = collections.Counter(op for provider, op in nodes.values() if provider == "CPUExecutionProvider")
    if on_cpu:
        print(f"  on the CPU provider (op: count): {dict(on_cpu)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 2048, 16384])
    parser.add_argument("--model", default=None, help="float32 ONNX file (default: the bundled model)")
    parser.add_argument("--checkpoint", default=None, help="its checkpoint (default: the bundled one)")
    parser.add_argument("--md-steps", type=int, default=20, help="0: no MD table")
    args = parser.parse_args()

    sdk = mtsim.load(args.model, device="cuda", precision="float32")
    checkpoint = args.checkpoint or str(sdk.path).replace(".float32.onnx", ".pt")
    eager = load_checkpoint(checkpoint).to(device="cuda", dtype=torch.float32)
    print(
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; model {sdk.path.name}; "
        f"SDK neighbour list: {sdk.neighbors}"
    )
    try:
        from mtsim.kernels.cuda import neighbor_list_cuda

        neighbor_list_cuda(np.zeros((1, 3)), 5.0 * np.eye(3), [True] * 3, 2.0)
        cuda_neighbors = True
    except Exception as err:  # e.g. a numba-cuda release that does not import with this numpy
        print(f"CUDA neighbour list unusable here ({type(err).__name__}: {err}); the SDK uses the CPU kernel")
        sdk.neighbors, cuda_neighbors = "cpu", False
    placement(str(sdk.path))
    import onnxruntime as ort

    print("\nOne evaluation, every head, float32 (ms: median (min-max)); eager/x > 1: x is faster than eager")
    print(
        f"{'atoms':>6} {'edges':>8} {'eager (device)':>22} {'ORT IOBinding (device)':>24} {'SDK from numpy':>22} "
        f"{'eager/ORT':>9} {'eager/SDK':>9} {'SDK atom-steps/s':>16}"
    )
    for n in args.sizes:
        atoms = si_cell(n)
        graph = build_graph([atoms], sdk.cutoff, dtype=np.float32)
        edges = graph["edge_index"].shape[1]
        repeats = REPEATS.get(n, 10)
        on_gpu = {k: torch.from_numpy(v).cuda() for k, v in graph.items()}

        def run_eager():
            with torch.enable_grad():
                return eager(**on_gpu)

        torch.cuda.reset_peak_memory_stats()
        t_eager = timed(run_eager, repeats)
        eager_peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()  # leave the GPU memory to onnxruntime's arena

        binding = sdk.session.io_binding()
        values = {
            name: ort.OrtValue.ortvalue_from_numpy(graph[name], "cuda", 0)
            for name in (i.name for i in sdk.session.get_inputs())
        }
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for output in sdk.session.get_outputs():
            binding.bind_output(output.name, "cuda")
        t_ort = timed(lambda: sdk.session.run_with_iobinding(binding), repeats)
        t_sdk = timed(lambda: sdk.predict(atoms), repeats)
        m_eager, m_ort, m_sdk = (statistics.median(t) for t in (t_eager, t_ort, t_sdk))
        print(
            f"{n:>6} {edges:>8} {summary(t_eager):>22} {summary(t_ort):>24} {summary(t_sdk):>22} "
            f"{m_eager / m_ort:>9.2f} {m_eager / m_sdk:>9.2f} {n / m_sdk:>16,.0f}   "
            f"(eager peak {eager_peak:.2f} GiB)"
        )

    if args.md_steps:
        md_table(sdk, args)
    if cuda_neighbors:
        neighbor_table()


def md_table(sdk, args) -> None:
    print(f"\nMD (NVE, 1 fs, skin list; ms per step, median over {args.md_steps} steps after 3 warm-up steps)")
    print(
        f"{'atoms':>6} {'MD step':>10} {'bare SDK evaluation':>20} {'step/bare':>10} {'atom-steps/s':>13} "
        f"{'vs MatterSim 256-atom A100':>27}"
    )
    for n in args.sizes:
        atoms = si_cell(n)
        state = MDState.from_structure(atoms)
        potential = ModelPotential(sdk)
        integrator = NVE(timestep=1.0)
        potential.compute(state)
        integrator.init(state)
        for _ in range(3):
            state = integrator.step(state, potential)
        steps = []
        for _ in range(args.md_steps):
            start = time.perf_counter()
            state = integrator.step(state, potential)
            steps.append(time.perf_counter() - start)
        graph = build_graph([atoms], sdk.cutoff, dtype=np.float32)
        bare = timed(lambda: sdk.evaluate(graph), 5, sync=lambda: None)
        m_step, m_bare = statistics.median(steps), statistics.median(bare)
        reference = 256 / (MATTERSIM_MS_PER_STEP_256 * 1e-3)
        print(
            f"{n:>6} {1e3 * m_step:>10.2f} {1e3 * m_bare:>20.2f} {m_step / m_bare:>10.2f} {n / m_step:>13,.0f} "
            f"{n / m_step / reference:>26.2f}x"
        )


def neighbor_table() -> None:
    from numba import cuda

    from mtsim.kernels import neighbor_list
    from mtsim.kernels.cuda import neighbor_list_cuda

    print("\nNeighbour list, r_c = 5 Å (ms: median (min-max)); CUDA on device arrays, edges left on the GPU")
    print(f"{'atoms':>7} {'edges':>9} {'CPU kernel':>20} {'CUDA kernel':>20} {'CPU/CUDA':>9}")
    for n in (2048, 16384, 131072):
        atoms = si_cell(n)
        positions = cuda.to_device(atoms.positions)
        cell, pbc = np.asarray(atoms.cell), atoms.pbc
        edges = len(neighbor_list(atoms.positions, cell, pbc, 5.0)[0])
        t_cpu = timed(lambda: neighbor_list(atoms.positions, cell, pbc, 5.0), 3, sync=lambda: None)
        t_gpu = timed(
            lambda: neighbor_list_cuda(positions, cell, pbc, 5.0, return_device=True), 10, sync=cuda.synchronize
        )
        print(
            f"{n:>7} {edges:>9} {summary(t_cpu):>20} {summary(t_gpu):>20} "
            f"{statistics.median(t_cpu) / statistics.median(t_gpu):>9.1f}"
        )


if __name__ == "__main__":
    main()
