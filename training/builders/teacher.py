"""Energy, forces, stress and magnetic moments from CHGNet 0.3.0 as the teacher (distillation labels).

Needs the ``teacher`` extra (``pip install 'mtsim[teacher]'``); ``chgnet`` is imported only when a teacher is
loaded. The extra pins the ``chgnet`` *package* 0.3.8: the 0.3.0 wheel was yanked because it ships without weights,
and it imports ``ase.constraints.ExpCellFilter``, which ase >= 3.23 no longer has. Package 0.3.8 carries the same
CHGNet 0.3.0 model weights (``pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar``, sha256 ``WEIGHTS_SHA256``,
checked on load), and ``load_teacher`` loads that model (``model_name="0.3.0"``).

Units and signs (CHGNet's ``CHGNet.predict_structure``, ``chgnet/model/model.py``):

- ``e``: energy per atom (the model is intensive) -> total energy ``e * n`` in eV. CHGNet 0.3.0 was trained on
  MPtrj energies, which carry the Materials Project's MP2020 corrections (PBE / PBE+U mixing, anion corrections);
- ``f``: forces in eV/Å, kept;
- ``s``: stress ``(1/V) dE/d(strain)`` converted by CHGNet to GPa with its factor 160.21766208 -> divided by the
  same factor to eV/Å^3. ``(1/V) dE/d(strain)`` is ASE's sign (positive = tensile), so no sign change; CHGNet's own
  ASE calculator does the same, and ``tests/test_builders.py`` checks the sign against a finite difference of the
  teacher's energy;
- ``m``: magnetic moments, absolute values (CHGNet predicts ``|m|``) in μB; the label is ``|m|``.

Labelled structures carry a ``SinglePointCalculator`` (energy, forces, stress in Voigt order, magmoms), so that
``ase.io.write`` puts the labels where ``mtsim.training.data`` reads them, and ``atoms.info["label_source"] =
PROVENANCE``; the command line also writes a manifest JSON beside the output.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from mtsim.training.builders._io import Progress, write_frames, write_manifest
from mtsim.training.checkpoint import file_sha256

TEACHER = "CHGNet 0.3.0"
MODEL_NAME = "0.3.0"
WEIGHTS_FILE = os.path.join("pretrained", "0.3.0", "chgnet_0.3.0_e29f68s314m37.pth.tar")
WEIGHTS_SHA256 = "d14ab7c0f093efe64b60a7bcd540bca10e74fb7f46c86108a079af60524659d1"
PROVENANCE = "distillation of CHGNet 0.3.0, a PBE(+U) MPtrj-trained model"
CHGNET_GPA = 160.21766208
"""CHGNet's conversion factor from eV/Å^3 to GPa (stress in GPa = stress in eV/Å^3 * CHGNET_GPA)."""
LABELS = ("energy", "forces", "stress", "magmoms")


class TeacherUnavailable(ImportError):
    """The ``chgnet`` package (the ``teacher`` extra) is not installed."""


def _import_chgnet():
    try:
        import chgnet
        from chgnet.model import CHGNet
    except ImportError as err:
        raise TeacherUnavailable(
            f"the CHGNet teacher needs the 'teacher' extra: pip install 'mtsim[teacher]' (import failed: {err})"
        ) from err
    return chgnet, CHGNet


def weights_path() -> str:
    chgnet, _ = _import_chgnet()
    return os.path.join(os.path.dirname(chgnet.__file__), WEIGHTS_FILE)


def load_teacher(device: str = "cpu", check_weights: bool = True):
    """The CHGNet 0.3.0 model (``chgnet.model.CHGNet``) on ``device``; ``check_weights`` verifies the sha256 of the
    weights file against ``WEIGHTS_SHA256``."""
    _, CHGNet = _import_chgnet()
    if check_weights:
        path = weights_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"CHGNet 0.3.0 weights missing at {path} (chgnet 0.3.0 wheels ship none; "
                "install the teacher extra, chgnet 0.3.8)"
            )
        digest = file_sha256(path)
        if digest != WEIGHTS_SHA256:
            raise RuntimeError(f"unexpected CHGNet 0.3.0 weights {path}: sha256 {digest}, expected {WEIGHTS_SHA256}")
    model = CHGNet.load(model_name=MODEL_NAME, use_device=device, check_cuda_mem=False, verbose=False)
    model.eval()
    return model


def teacher_calculator(model=None, device: str = "cpu"):
    """CHGNet's own ASE calculator around ``model`` (default: ``load_teacher``), e.g. for teacher MD."""
    _import_chgnet()
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(
        model if model is not None else load_teacher(device), use_device=device, check_cuda_mem=False
    )


def convert_prediction(prediction: dict, num_atoms: int) -> dict[str, np.ndarray]:
    """One structure's CHGNet prediction (``e`` eV/atom, ``f`` eV/Å, ``s`` GPa, ``m`` μB) as labels in the training
    units: energy eV (total), forces eV/Å, stress [3,3] eV/Å^3 (ASE sign), magmoms μB (absolute values)."""

    def array(value):
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        return np.asarray(value, dtype=np.float64)

    return {
        "energy": float(array(prediction["e"]).reshape(())) * num_atoms,
        "forces": array(prediction["f"]).reshape(num_atoms, 3),
        "stress": array(prediction["s"]).reshape(3, 3) / CHGNET_GPA,
        "magmoms": array(prediction["m"]).reshape(num_atoms),
    }


def predict(
    frames: Sequence[ase.Atoms], model=None, batch_size: int = 16, quiet: bool = True
) -> list[dict[str, np.ndarray] | None]:
    """Teacher labels (``convert_prediction``) for every structure; ``None`` where CHGNet fails on one (e.g. an
    atom without neighbours within its cutoff), with a warning."""
    from pymatgen.io.ase import AseAtomsAdaptor

    model = load_teacher() if model is None else model
    results: list[dict[str, np.ndarray] | None] = []
    progress = Progress("teacher", len(frames), quiet=quiet)
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        structures = [AseAtomsAdaptor.get_structure(_plain(atoms)) for atoms in chunk]
        try:
            predictions = model.predict_structure(structures, task="efsm", batch_size=batch_size)
        except Exception:  # noqa: BLE001 - retry one by one to isolate the structure CHGNet rejects
            predictions = []
            for k, structure in enumerate(structures):
                try:
                    predictions.append(model.predict_structure(structure, task="efsm"))
                except Exception as err:  # noqa: BLE001
                    print(
                        f"[teacher] structure {start + k}: CHGNet failed ({err}); left unlabelled",
                        file=sys.stderr,
                        flush=True,
                    )
                    predictions.append(None)
        if isinstance(predictions, dict):
            predictions = [predictions]
        for atoms, prediction in zip(chunk, predictions):
            results.append(None if prediction is None else convert_prediction(prediction, len(atoms)))
        progress.update(len(results))
    return results


def _plain(atoms: ase.Atoms) -> ase.Atoms:
    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def label(frames: Sequence[ase.Atoms], model=None, batch_size: int = 16, quiet: bool = True) -> list[ase.Atoms]:
    """Copies of ``frames`` (structure, ``info`` and per-atom arrays such as Born charges kept, old energy/forces/
    stress/magmoms labels dropped) that CHGNet could label, with a
    ``SinglePointCalculator`` holding energy, forces, stress (Voigt, eV/Å^3, ASE sign) and magmoms, and
    ``info["label_source"] = PROVENANCE``."""
    labelled = []
    for atoms, labels in zip(frames, predict(frames, model, batch_size, quiet)):
        if labels is None:
            continue
        out = _plain(atoms)
        out.info = {key: value for key, value in atoms.info.items() if key not in LABELS}
        for key, value in atoms.arrays.items():
            if key not in ("numbers", "positions") and key not in LABELS:
                out.arrays[key] = value.copy()
        out.info["label_source"] = PROVENANCE
        out.info["teacher"] = TEACHER
        out.calc = SinglePointCalculator(
            out,
            energy=labels["energy"],
            forces=labels["forces"],
            stress=full_3x3_to_voigt_6_stress(labels["stress"]),
            magmoms=labels["magmoms"],
        )
        labelled.append(out)
    return labelled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtsim.training.builders.teacher", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", required=True, help="structures to label (extxyz or any ASE-readable file)")
    parser.add_argument("--out", required=True, help="labelled extxyz (a .manifest.json is written beside it)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="label only the first N structures")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    frames = ase.io.read(args.data, index=":")
    frames = frames[: args.limit] if args.limit else frames
    start = time.perf_counter()
    model = load_teacher(args.device)
    loaded = time.perf_counter()
    labelled = label(frames, model, args.batch_size, quiet=args.quiet)
    done = time.perf_counter()
    write_frames(args.out, labelled)
    import chgnet

    write_manifest(
        os.path.splitext(args.out)[0] + ".manifest.json",
        {
            "builder": "mtsim.training.builders.teacher",
            "label_source": PROVENANCE,
            "teacher": TEACHER,
            "chgnet_package": getattr(chgnet, "__version__", "unknown"),
            "weights_sha256": WEIGHTS_SHA256,
            "input": os.path.basename(args.data),
            "structures": len(frames),
            "labelled": len(labelled),
            "atoms": int(sum(len(a) for a in labelled)),
            "units": {
                "energy": "eV (total; MPtrj energies carry MP2020 corrections)",
                "forces": "eV/Å",
                "stress": "eV/Å^3, ASE sign (positive = tensile), Voigt xx yy zz yz xz xy",
                "magmoms": "μB, absolute values (CHGNet predicts |m|)",
            },
            "charges": "not labelled: no open Bader data offline; the charges head stays untrained",
            "seconds_load": loaded - start,
            "seconds_label": done - loaded,
            "seconds_per_structure": (done - loaded) / max(len(frames), 1),
            "device": args.device,
        },
    )
    if not args.quiet:
        print(
            f"[teacher] labelled {len(labelled)}/{len(frames)} in {done - loaded:.1f} s "
            f"({(done - loaded) / max(len(frames), 1):.3f} s/structure) -> {args.out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
