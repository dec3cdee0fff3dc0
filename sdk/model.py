"""Loading an exported mtsim ONNX file and predicting every output with onnxruntime (no torch).

>>> import mtsim
>>> model = mtsim.load("mtsim-1M.float64.onnx")          # doctest: +SKIP
>>> p = model.predict(atoms)                              # doctest: +SKIP
>>> p.energy, p.forces.shape, p.born_charges.shape        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtsim.checks import positive
from mtsim.graph import build_graph, merge_graphs, slot_count
from mtsim.kernels import cuda_available
from mtsim.onnx_format import (
    INPUT_NAMES,
    INPUT_SHAPES,
    INTEGER_INPUTS,
    OUTPUT_NAMES,
    OUTPUT_SHAPES,
    OnnxFileNotFoundError,
    check_mtsim_metadata,
    session_info,
    verify_weights,
)
from mtsim.session import open_session
from mtsim.structure import Structure, as_structure

PER_STRUCTURE_OUTPUTS = tuple(name for name in OUTPUT_NAMES if OUTPUT_SHAPES[name][0] == "b")
"""Outputs with one value per structure (leading dimension ``b``): energy, stress, dielectric."""
PER_ATOM_OUTPUTS = tuple(name for name in OUTPUT_NAMES if OUTPUT_SHAPES[name][0] == "n")
"""Outputs with one value per atom (leading dimension ``n``): forces, magmoms, charges, born_charges."""
MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "mtsim-default"


def split_outputs(outputs: dict[str, np.ndarray], atoms_per_structure: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """The batched outputs of one evaluation (every name of ``OUTPUT_NAMES``), one dict per structure: per-structure
    outputs indexed by structure, per-atom outputs sliced by the structures' atom counts (in batch order)."""
    bounds = np.cumsum([0, *atoms_per_structure])
    if bounds[-1] != len(outputs[PER_ATOM_OUTPUTS[0]]):
        raise ValueError(
            f"the outputs hold {len(outputs[PER_ATOM_OUTPUTS[0]])} atoms, but atoms_per_structure "
            f"adds up to {bounds[-1]}"
        )
    return [
        {
            name: outputs[name][k] if name in PER_STRUCTURE_OUTPUTS else outputs[name][bounds[k] : bounds[k + 1]]
            for name in OUTPUT_NAMES
        }
        for k in range(len(atoms_per_structure))
    ]


@dataclass
class Prediction:
    """Every output for one structure, plain numpy.

    energy (eV), forces [n,3] (eV/Å), stress [3,3] (eV/Å^3, ASE sign: positive = tensile; zero for a cell
    without volume), magmoms [n] (μB), charges [n] (e), born_charges [n,3,3] (e; ``Z[i, a, b] = dF_ib/dE_a``,
    field index first, as phonopy), dielectric [3,3] (eps_inf).
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray
    magmoms: np.ndarray
    charges: np.ndarray
    born_charges: np.ndarray
    dielectric: np.ndarray

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> Prediction:
        """From one structure's outputs (an item of ``split_outputs``); the energy becomes a Python float."""
        return cls(**{**{name: outputs[name] for name in OUTPUT_NAMES}, "energy": float(outputs["energy"])})

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in OUTPUT_NAMES}


def cuda_usable() -> bool:
    """True if onnxruntime has the CUDA provider and the driver reports at least one GPU (checked quietly)."""
    import ctypes

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return libcuda.cuInit(0) == 0 and libcuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when usable, else ``"cpu"``; ``"cuda"`` without a usable GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    if cuda_usable():
        return "cuda"
    if device == "cuda":
        raise RuntimeError("device='cuda' asked for, but onnxruntime-gpu with a usable CUDA GPU is not present")
    return "cpu"


def find_model_file(model: str | os.PathLike | None, precision: str | None) -> Path:
    """Resolve ``model`` (None = bundled default; a file; or a stem with ``.float32.onnx``/``.float64.onnx``)."""
    if model is None:
        stem = MODELS_DIR / DEFAULT_MODEL
        candidates = [Path(f"{stem}.{p}.onnx") for p in ((precision,) if precision else ("float32", "float64"))]
        for path in candidates:
            if path.is_file():
                return path
        raise OnnxFileNotFoundError(
            f"the bundled default model is missing: none of {[str(c) for c in candidates]} exists. "
            "Pass a model file (mtsim.load('model.onnx')) or export one with `mtsim convert`."
        )
    path = Path(model)
    if path.is_file():
        return path
    stems = [Path(f"{path}.{p}.onnx") for p in ((precision,) if precision else ("float32", "float64"))]
    for candidate in stems:
        if candidate.is_file():
            return candidate
    raise OnnxFileNotFoundError(f"model file not found: {path}")


class Model:
    """An exported mtsim model on an onnxruntime session.

    ``metadata``: the ONNX metadata dict; ``elements``: supported atomic numbers; ``cutoff`` (Å); ``neighbors``:
    the neighbour-list kernel (``"cuda"`` when the model runs on a GPU and numba-cuda is usable, else ``"cpu"``);
    ``precision``: ``"float32"`` or ``"float64"``; ``device``: ``"cpu"`` or ``"cuda"``; ``memory_budget``:
    bytes one evaluation may use (None: 80 % of the memory available at each call; given at load, it also turns
    onnxruntime's CPU memory arena off so that the peak stays within it, calls may be slower); ``io_binding``: evaluate
    through onnxruntime's IOBinding (on by default on a GPU; same numbers as a plain run); ``untrained_outputs``:
    outputs whose head was never trained (the graph still returns numbers for them; they are not predictions).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        threads: int | None = None,
        memory_budget: float | None = None,
    ):
        self.path = Path(path)
        self.memory_budget = None if memory_budget is None else positive("memory_budget (bytes)", memory_budget)
        self.device = resolve_device(device)
        self.neighbors = "cuda" if self.device == "cuda" and cuda_available() else "cpu"
        # a budget turns onnxruntime's CPU arena off: it keeps its high-water mark across calls (batches of
        # different sizes grew it to 1.5x the budget); without it every call returns its memory, at some speed cost
        self.session = open_session(self.path, self.device, threads, cpu_arena=memory_budget is None)
        info = check_mtsim_metadata(session_info(self.path, self.session))
        verify_weights(self.path, info.metadata)
        self.metadata = info.metadata
        self.cutoff = info.cutoff
        self.precision = info.precision
        self.dtype = np.dtype(self.precision)
        self.elements = info.elements
        self.untrained_outputs = tuple(json.loads(self.metadata.get("untrained_outputs", "[]")))
        self.io_binding = self.device == "cuda"

    def __repr__(self) -> str:
        return (
            f"mtsim.Model({self.metadata.get('model_name', '?')}, {self.precision}, device={self.device!r}, "
            f"path={str(self.path)!r})"
        )

    # ------------------------------------------------------------------------------------------ evaluation
    def check_elements(self, numbers: np.ndarray) -> None:
        check_elements(numbers, self.elements)

    def evaluate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on prebuilt inputs (``mtsim.graph.build_graph`` layout); returns the raw batched outputs.

        The inputs are checked first (:func:`check_inputs`): :class:`InputTypeError` or :class:`InputError` naming
        the input; nothing is converted."""
        check_inputs(inputs, self.dtype, self.elements)
        feeds = {name: inputs[name] for name in INPUT_NAMES}
        if self.io_binding:
            return self._evaluate_bound(feeds)
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def _evaluate_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """IOBinding: each input is copied to the session's device once and the outputs are allocated there by
        onnxruntime, then copied back together (no per-output synchronisation)."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in OUTPUT_NAMES:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(OUTPUT_NAMES, binding.copy_outputs_to_cpu()))

    def estimate_bytes(self, slots: int) -> float:
        """Estimated peak memory (bytes) of one evaluation whose graph has ``slots`` edge slots
        (``mtsim.graph.slot_count``: atoms times the largest neighbour count plus one):
        ``BYTES_PER_SLOT_CHANNEL_MODULE`` times the channels, the attention modules (4 per block + 5 output heads)
        and the float size per slot (20.6 kB per slot for the 1M preset in float32).
        """
        config = json.loads(self.metadata.get("model_config", "{}"))
        modules = 4 * config.get("num_blocks", 2) + 5
        per_slot = BYTES_PER_SLOT_CHANNEL_MODULE * config.get("dim", 128) * modules * self.dtype.itemsize
        return per_slot * slots

    def predict(
        self, structures, *, batch_size: int | None = None, allow_overlap: bool = False
    ) -> Prediction | list[Prediction]:
        """Predict every output for an ``ase.Atoms`` / ``mtsim.Structure`` or a list of them.

        Lists are evaluated in batches of consecutive structures, at most ``batch_size`` of them, ``ATOM_BUDGET``
        atoms and, on the CPU, ``CPU_SLOT_BUDGET`` edge slots, split further so that each stays within
        ``memory_budget`` bytes (default: 80 % of the memory available now). A structure whose estimate alone
        exceeds the budget raises ``MemoryError`` before it is evaluated.
        """
        single = not isinstance(structures, (list, tuple))
        items: list[Structure] = [as_structure(s) for s in ([structures] if single else structures)]
        if not items:
            raise ValueError("no structures given")
        for s in items:
            self.check_elements(s.numbers)
        budget = self.memory_budget if self.memory_budget is not None else 0.8 * available_memory()
        graphs = (
            build_graph([s], self.cutoff, dtype=self.dtype, check_overlap=not allow_overlap, neighbors=self.neighbors)
            for s in items
        )  # built as the batches need them
        results: list[Prediction] = []
        for batch in _batches(graphs, batch_size, None if self.device == "cuda" else CPU_SLOT_BUDGET):
            pending = [batch]
            while pending:
                chunk = pending.pop(0)
                graph = merge_graphs(chunk) if len(chunk) > 1 else chunk[0]
                need = self.estimate_bytes(slot_count(graph))
                if need > budget:
                    if len(chunk) == 1:
                        raise MemoryError(
                            f"a structure of {len(graph['numbers'])} atoms ({graph['edge_index'].shape[1]} edges) "
                            f"needs an estimated {need / 2**30:.1f} GiB, more than the budget of "
                            f"{budget / 2**30:.1f} GiB"
                        )
                    half = len(chunk) // 2
                    pending[:0] = [chunk[:half], chunk[half:]]
                    continue
                out = self.evaluate(graph)
                results += [
                    Prediction.from_outputs(values) for values in split_outputs(out, [len(g["numbers"]) for g in chunk])
                ]
        return results[0] if single else results


ATOM_BUDGET = 2048
"""Atoms per batch when evaluating lists of structures."""
CPU_SLOT_BUDGET = 4096
"""Edge slots per batch on the CPU, where batching saves only the per-call overhead (~2-4 ms) and larger calls run
slower per slot, padding included (measured in ``bench/README.md``, "Lists of structures")."""
BYTES_PER_SLOT_CHANNEL_MODULE = 3.1
"""Peak memory per edge slot, channel, attention module and byte of float (onnxruntime CPU, measured)."""


class InputError(ValueError):
    """An input of ``Model.evaluate`` is missing, of the wrong shape, or out of range."""


class InputTypeError(InputError, TypeError):
    """An input of ``Model.evaluate`` is not a numpy array of the contract's type (int64, or the model's float
    precision: nothing is down- or up-cast in silence)."""


def check_inputs(inputs: dict[str, np.ndarray], dtype: np.dtype, elements: Sequence[int]) -> None:
    """Check model inputs against the contract (``mtsim.onnx_format``): every name of ``INPUT_NAMES`` a numpy
    array, int64 or of ``dtype``; shapes ``INPUT_SHAPES`` with consistent n, b, e; atomic numbers in ``elements``;
    ``batch`` sorted, in 0..b-1; edge indices in 0..n-1; slots in 0..e (e: padding); positions, cell and shifts
    finite. O(n + e) numpy."""
    missing = [name for name in INPUT_NAMES if name not in inputs]
    if missing:
        raise InputError(f"missing input(s) {missing}; expected {list(INPUT_NAMES)}")
    sizes: dict[str, int] = {}
    for name in INPUT_NAMES:
        value = inputs[name]
        expected = np.dtype(np.int64) if name in INTEGER_INPUTS else np.dtype(dtype)
        if not isinstance(value, np.ndarray):
            raise InputTypeError(f"input {name!r} must be a numpy array of {expected}, got {type(value).__name__}")
        if value.dtype != expected:
            owner = "the mtsim ONNX contract" if name in INTEGER_INPUTS else "this model file"
            raise InputTypeError(f"input {name!r} is {value.dtype}, but {owner} is {expected}")
        shape = INPUT_SHAPES[name]
        if value.ndim != len(shape):
            raise InputError(f"input {name!r} must have shape {shape}, got {value.shape}")
        for dim, size in zip(shape, value.shape):
            if isinstance(dim, int) and size != dim or sizes.setdefault(str(dim), size) != size:
                raise InputError(
                    f"input {name!r} has shape {value.shape}, expected {shape} with n = "
                    f"{sizes.get('n')}, b = {sizes.get('b')}, e = {sizes.get('e')}"
                )
    n, b, e = sizes["n"], sizes["b"], sizes["e"]
    for name in ("positions", "cell", "shifts"):
        if not np.isfinite(inputs[name]).all():
            raise InputError(f"input {name!r} contains NaN or inf")
    numbers = inputs["numbers"]
    if n:
        low, high = int(numbers.min()), int(numbers.max())
        if low < 1 or high > 94:
            raise InputError(f"input 'numbers' holds atomic number {low if low < 1 else high}; expected 1..94")
        check_elements(numbers, elements)
        batch = inputs["batch"]
        if batch[0] < 0 or batch[-1] >= b or np.any(np.diff(batch) < 0):
            raise InputError(f"input 'batch' must be sorted structure indices in 0..{b - 1}")
    edges = inputs["edge_index"]
    if e and (edges.min() < 0 or edges.max() >= n):
        raise InputError(
            f"input 'edge_index' holds atom index {edges.min() if edges.min() < 0 else edges.max()}; "
            f"expected 0..{n - 1}"
        )
    for name in ("receiver_slots", "sender_slots"):
        slots = inputs[name]
        if slots.size and (slots.min() < 0 or slots.max() > e):
            raise InputError(
                f"input {name!r} holds edge index {slots.min() if slots.min() < 0 else slots.max()}; "
                f"expected 0..{e} ({e}: padding)"
            )


def check_elements(numbers: np.ndarray, elements: Sequence[int]) -> None:
    """Raise ``ValueError`` naming every atomic number in ``numbers`` that is not in ``elements``."""
    unknown = sorted(set(np.unique(numbers).tolist()) - set(elements))
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
        raise ValueError(f"unknown element: the model does not support {names}")


def available_memory() -> float:
    """Bytes of memory available now (``MemAvailable`` of /proc/meminfo; 16 GiB where that is unreadable)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 16.0 * 2**30


def _batches(graphs, batch_size: int | None, slot_budget: int | None):
    """Lists of consecutive ``graphs`` (one structure each, consumed lazily) per batch: at most ``batch_size``
    structures, ``ATOM_BUDGET`` atoms and ``slot_budget`` slots (the batch's atoms times its largest receiver
    count + 1, padding included)."""
    batch: list[dict[str, np.ndarray]] = []
    atoms = width = 0
    for graph in graphs:
        n, kr = graph["receiver_slots"].shape
        if batch and (
            (batch_size and len(batch) >= batch_size)
            or atoms + n > ATOM_BUDGET
            or (slot_budget and (atoms + n) * (max(width, kr) + 1) > slot_budget)
        ):
            yield batch
            batch, atoms, width = [], 0, 0
        batch.append(graph)
        atoms, width = atoms + n, max(width, kr)
    if batch:
        yield batch


def load(
    model: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    memory_budget: float | None = None,
) -> Model:
    """Load an mtsim ONNX model (``None``: the bundled default). ``device``: ``"auto"``, ``"cpu"`` or ``"cuda"``;
    ``precision``: ``"float32"``/``"float64"`` picks between files of one stem; ``threads``: intra-op threads;
    ``memory_budget``: bytes per evaluation (see ``Model``)."""
    if precision not in (None, "float32", "float64"):
        raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")
    device = resolve_device(device)
    path = find_model_file(model, precision)
    loaded = Model(path, device=device, threads=threads, memory_budget=memory_budget)
    if precision is not None and loaded.precision != precision:
        raise ValueError(f"{path} is a {loaded.precision} model, but precision={precision!r} was asked for")
    return loaded
