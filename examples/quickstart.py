"""Quick start: checkpoint -> validated ONNX -> every head through the torch-free runtime.

Until the bundled pretrained model exists, this builds a freshly initialised 1M model (random weights: the
numbers it prints are NOT physical), saves it as a checkpoint, converts it with ``mtsim convert`` (which
validates the ONNX file against PyTorch), and predicts all heads for a few structures with ``mtsim predict``.
Everything is written to ``quickstart/`` (or the folder given as the first argument).
"""

import subprocess
import sys
from pathlib import Path

import ase.io
import torch
from ase.build import bulk, molecule

from mtsim.training import build_model, save_checkpoint


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main(folder: str = "quickstart") -> None:
    out = Path(folder)
    out.mkdir(exist_ok=True)
    checkpoint, onnx_file = out / "mtsim-1M-untrained.pt", out / "mtsim-1M-untrained.onnx"
    structures = out / "structures.extxyz"

    model = build_model("1M", dtype=torch.float32, seed=0)
    model.metadata["training_data"] = "none: untrained random weights (quick start)"
    save_checkpoint(model, checkpoint)

    frames = [bulk("MgO", "rocksalt", a=4.21), bulk("ZnO", "wurtzite", a=3.25, c=5.21),
              bulk("Si", "diamond", a=5.43) * (2, 2, 2), molecule("H2O")]
    ase.io.write(structures, frames, format="extxyz")

    run("mtsim", "convert", str(checkpoint), "-o", str(onnx_file))
    run("mtsim", "info", str(onnx_file))
    run("mtsim", "predict", str(structures), "--model", str(onnx_file), "--device", "cpu",
        "-o", str(out / "predictions.extxyz"))


if __name__ == "__main__":
    main(*sys.argv[1:])
