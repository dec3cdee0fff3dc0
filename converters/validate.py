"""Check an exported ONNX file against the PyTorch model it came from.

``validate_export(model, onnx_path)`` evaluates a built-in panel of structures (``validation_panel``) with
onnxruntime (CPU) and with PyTorch and compares all seven outputs.

Error measure (per output, per panel case)::

    error = max|onnx - torch| / max(max|torch|, FLOORS[output])

i.e. the largest deviation relative to the case's largest value of that output, where values below a
physically negligible floor (0.1 eV, 0.1 eV/Å, 1e-3 eV/Å^3, 0.1 μB, 0.1 e, 1) count as that floor. Without the
floor an output that vanishes by symmetry (forces of a perfect crystal) or is a small difference of larger
numbers (charges after the per-structure mean is removed, in an elemental solid or for an untrained model) would
be measured against its own rounding noise.

A check (one output of one case) passes when every value is finite, two onnxruntime runs of the same session
give bitwise identical outputs, and

* float64 files: ``error <= 1e-10``;
* float32 files: ``error <= 1e-5``, or, failing that, the file is as accurate as PyTorch float32 itself:
  ``error64(onnx) <= 1e-5 + 2 * error64(torch)``, where ``error64`` is the same measure against the model
  evaluated in float64. PyTorch float32 deviates from float64 by up to ~3e-5 on the 1M preset (forces and
  charges of a 200-atom cell: sums of many terms, charges minus their structure mean), so two float32
  evaluations cannot always agree to 1e-5; the second clause accepts exactly those cases where the difference is
  float32 rounding and not an export error (an export error makes error64(onnx) large).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from mtsim.onnx_format import OUTPUT_NAMES, check_onnx_file

TOLERANCES = {"float32": 1e-5, "float64": 1e-10}
FLOORS = {
    "energy": 0.1,
    "forces": 0.1,
    "stress": 1e-3,
    "magmoms": 0.1,
    "charges": 0.1,
    "born_charges": 0.1,
    "dielectric": 1.0,
}
"""Scale (in the output's units) below which an output's values count as negligible in the error measure."""


def output_error(onnx_value: np.ndarray, torch_value: np.ndarray, output: str) -> float:
    """The error measure of the module docstring: max|onnx - torch| / max(max|torch|, FLOORS[output])."""
    onnx_value, torch_value = np.asarray(onnx_value, np.float64), np.asarray(torch_value, np.float64)
    if onnx_value.shape != torch_value.shape:
        return float("inf")
    max_abs = float(np.abs(onnx_value - torch_value).max(initial=0.0))
    return max_abs / max(float(np.abs(torch_value).max(initial=0.0)), FLOORS[output])


# ----------------------------------------------------------------------------------------------- panel
def validation_panel(seed: int = 0) -> list[tuple[str, list]]:
    """The built-in structures: ``[(name, [ase.Atoms, ...]), ...]``, each entry evaluated as one batch.

    Covers a molecule, an isolated atom (no neighbours: the layer norms see e = 0), a slab, a periodic wire, a
    small triclinic cell, one-atom cells, a perfect (symmetric) crystal, a compressed crystal (bonds inside the
    short-range repulsion's switch), a 200-atom cell and batches of mixed sizes. Every size differs from the
    export's tracing example (n=7, e=31, b=2). Positions are rattled (seeded) except where symmetry is the point.
    """
    from ase import Atoms
    from ase.build import bulk, molecule

    rng = np.random.default_rng(seed)

    def rattled(atoms, amplitude=0.05):
        atoms = atoms.copy()
        atoms.positions += rng.normal(0.0, amplitude, atoms.positions.shape)
        return atoms

    ethanol = rattled(molecule("CH3CH2OH"))
    water = rattled(molecule("H2O"))
    isolated = Atoms("Fe", positions=[[0.0, 0.0, 0.0]])
    slab = rattled(bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 2))
    slab.center(vacuum=5.0, axis=2)
    slab.pbc = (True, True, False)
    wire = rattled(
        Atoms(
            "C4",
            positions=[[0, 0, 0], [1.3, 0.1, 0], [2.6, 0, 0.1], [3.9, 0.1, 0.1]],
            cell=[5.2, 0, 0],
            pbc=(True, False, False),
        )
    )
    triclinic = rattled(
        Atoms(
            "SiOMg",
            scaled_positions=[[0, 0, 0], [0.3, 0.4, 0.1], [0.6, 0.2, 0.7]],
            cell=[[3.1, 0, 0], [0.8, 2.9, 0], [0.5, -0.7, 3.4]],
            pbc=True,
        )
    )
    one_atom = bulk("Fe", "bcc", a=2.87)  # primitive (triclinic-looking) one-atom cell
    one_atom_skew = Atoms("Cu", cell=[[2.6, 0, 0], [0.4, 2.5, 0], [0.3, 0.5, 2.7]], pbc=True)
    perfect = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # zero forces by symmetry
    large = rattled(bulk("MgO", "rocksalt", a=4.21, cubic=True) * (5, 5, 2), 0.03)  # 200 atoms
    compressed = rattled(bulk("MgO", "rocksalt", a=3.0, cubic=True), 0.1)  # Mg-O 0.72x the covalent radii
    sparse = Atoms("HeAr", positions=[[0, 0, 0], [6.0, 6.0, 6.0]], cell=np.eye(3) * 12.0, pbc=True)
    return [
        ("molecule", [ethanol]),
        ("isolated atom", [isolated]),
        ("slab", [slab]),
        ("wire", [wire]),
        ("triclinic", [triclinic]),
        ("one-atom cell", [one_atom]),
        ("one-atom skew", [one_atom_skew]),
        ("perfect crystal", [perfect]),
        ("compressed", [compressed]),
        ("no neighbours", [sparse]),
        ("200 atoms", [large]),
        ("mixed batch", [water, one_atom, slab, isolated, triclinic, rattled(bulk("Si", "diamond", a=5.43))]),
    ]


# ----------------------------------------------------------------------------------------------- report
@dataclass
class Comparison:
    """One output of one panel case."""

    case: str
    output: str
    max_abs: float  # max |onnx - torch|
    ref_max: float  # max |torch| in this case
    error: float  # max_abs / max(ref_max, floor)
    tolerance: float
    finite: bool
    deterministic: bool
    onnx_error64: float | None = None  # float32 files: error of the ONNX outputs against the float64 model
    torch_error64: float | None = None  # float32 files: error of PyTorch float32 against the float64 model

    @property
    def as_accurate_as_torch(self) -> bool:
        """float32: the ONNX file is (within 2x + tolerance) as close to float64 as PyTorch float32 is."""
        if self.onnx_error64 is None or self.torch_error64 is None:
            return False
        return self.onnx_error64 <= self.tolerance + 2.0 * self.torch_error64

    @property
    def passed(self) -> bool:
        return self.finite and self.deterministic and (self.error <= self.tolerance or self.as_accurate_as_torch)


def _badness(c: Comparison) -> tuple:
    return (not c.passed, not c.finite, not c.deterministic, c.error)


@dataclass
class ValidationReport:
    onnx_path: str
    precision: str
    tolerance: float
    comparisons: list[Comparison] = field(default_factory=list)
    atoms: dict[str, int] = field(default_factory=dict)  # atoms per case
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    def worst(self) -> dict[str, Comparison]:
        """The largest error of each output over the panel."""
        worst: dict[str, Comparison] = {}
        for c in self.comparisons:
            if c.output not in worst or _badness(c) > _badness(worst[c.output]):
                worst[c.output] = c
        return {name: worst[name] for name in OUTPUT_NAMES if name in worst}

    def max_errors(self) -> dict[str, float]:
        return {name: c.error for name, c in self.worst().items()}

    def table(self, rows: str = "worst") -> str:
        """A text table: the worst case per output (``rows="worst"``) or every comparison (``"all"``)."""
        items = list(self.worst().values()) if rows == "worst" else self.comparisons
        f64 = self.precision == "float32"
        header = (
            f"{'output':<13} {'case':<16} {'max|diff|':>10} {'max|ref|':>10} {'error':>9} {'tol':>7}"
            + (f" {'onnx-f64':>9} {'torch-f64':>9}" if f64 else "")
            + "  status"
        )
        lines = [header, "-" * len(header)]
        for c in items:
            status = "FAIL" if not c.passed else ("ok" if c.error <= c.tolerance else "ok (f32 rounding)")
            notes = [n for n, bad in (("non-finite", not c.finite), ("non-deterministic", not c.deterministic)) if bad]
            if notes:
                status += " (" + ", ".join(notes) + ")"
            extra = ""
            if f64:
                extra = "".join(
                    f" {v:>9.2e}" if v is not None else f" {'-':>9}" for v in (c.onnx_error64, c.torch_error64)
                )
            lines.append(
                f"{c.output:<13} {c.case:<16} {c.max_abs:>10.2e} {c.ref_max:>10.2e} {c.error:>9.2e} "
                f"{c.tolerance:>7.0e}{extra}  {status}"
            )
        if f64:
            lines.append(
                "(onnx-f64 / torch-f64: errors of the ONNX file and of PyTorch float32 against the model in float64)"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} of {len(self.comparisons)} checks)"
        if self.passed and any(c.error > c.tolerance for c in self.comparisons):
            verdict += " (some float32 checks within PyTorch float32's own error, see the table)"
        return (
            f"validation {verdict}: {os.path.basename(self.onnx_path)} ({self.precision}) vs PyTorch on "
            f"{len(self.atoms)} panel cases ({sum(self.atoms.values())} atoms), tolerance {self.tolerance:g}, "
            f"bitwise-repeatable onnxruntime runs, {self.seconds:.1f} s"
        )


# ----------------------------------------------------------------------------------------------- validation
def onnx_session(path: str | os.PathLike, threads: int = 0):
    """A CPU onnxruntime session as the SDK makes it (``mtsim.session.open_session``; ``threads`` intra-op
    threads, 0 = onnxruntime's default)."""
    from mtsim.session import open_session

    return open_session(path, "cpu", threads)


def torch_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch outputs of ``model`` (eval mode, forces on) for graph ``inputs``."""
    import torch

    tensors = {key: torch.from_numpy(value) for key, value in inputs.items()}
    with torch.enable_grad():
        out = model(**tensors, compute_forces=True)
    return {key: out[key].detach().cpu().numpy() for key in OUTPUT_NAMES}


def validate_export(
    model_or_checkpoint, onnx_path: str | os.PathLike, panel=None, tolerance: float | None = None, threads: int = 0
) -> ValidationReport:
    """Compare ``onnx_path`` with ``model_or_checkpoint`` (``MTModel`` or checkpoint path) on ``panel``.

    The model is evaluated in the file's precision (a copy is cast if needed). ``panel`` defaults to
    ``validation_panel()``; ``tolerance`` to ``TOLERANCES[precision]``. Never raises on a mismatch: inspect
    ``report.passed`` / ``report.table()``.
    """
    import copy
    import time

    import torch

    from mtsim.graph import build_graph
    from mtsim.training.model import MTModel

    start = time.perf_counter()
    info = check_onnx_file(onnx_path)
    precision = info.precision
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    if isinstance(model_or_checkpoint, MTModel):
        model = model_or_checkpoint
    else:
        from mtsim.training.checkpoint import load_checkpoint

        model = load_checkpoint(model_or_checkpoint)
    dtype = torch.float64 if precision == "float64" else torch.float32
    if model.dtype != dtype or model.training:
        model = copy.deepcopy(model).to(dtype)
    model = model.eval()
    model64 = copy.deepcopy(model).double().eval() if precision == "float32" else None
    numpy_dtype = np.float64 if precision == "float64" else np.float32
    session = onnx_session(onnx_path, threads)
    panel = validation_panel() if panel is None else panel

    report = ValidationReport(os.fspath(onnx_path), precision, tolerance)
    for name, structures in panel:
        inputs = build_graph(structures, info.cutoff, dtype=numpy_dtype)
        reference = torch_outputs(model, inputs)
        reference64 = None
        if model64 is not None:
            reference64 = torch_outputs(model64, build_graph(structures, info.cutoff, dtype=np.float64))
        first = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), inputs)))
        second = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), inputs)))
        report.atoms[name] = int(inputs["numbers"].shape[0])
        for key in OUTPUT_NAMES:
            ref, got = reference[key].astype(np.float64), first[key].astype(np.float64)
            finite = bool(np.isfinite(ref).all() and np.isfinite(got).all() and ref.shape == got.shape)
            max_abs = float(np.abs(got - ref).max(initial=0.0)) if ref.shape == got.shape else float("inf")
            ref_max = float(np.abs(ref).max(initial=0.0))
            error = output_error(got, ref, key)
            deterministic = first[key].tobytes() == second[key].tobytes()
            errors64 = (None, None)
            if reference64 is not None and reference64[key].shape == ref.shape:
                errors64 = (output_error(got, reference64[key], key), output_error(ref, reference64[key], key))
            report.comparisons.append(
                Comparison(
                    name,
                    key,
                    max_abs,
                    ref_max,
                    error if finite else float("inf"),
                    tolerance,
                    finite,
                    deterministic,
                    *errors64,
                )
            )
    report.seconds = time.perf_counter() - start
    return report
