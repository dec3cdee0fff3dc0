"""mtsim: multi-task materials foundation model — torch-free inference SDK.

``import mtsim`` never imports torch. Subpackages: ``mtsim.kernels`` (Numba neighbour lists),
``mtsim.training`` (PyTorch model, training, export; needs the ``train`` extra) and
``mtsim.converters`` (``mtsim convert`` / ``mtsim info``).
"""

from mtsim.calculator import Calculator
from mtsim.model import Model, Prediction, load
from mtsim.onnx_format import ModelFileError
from mtsim.structure import Structure

__version__ = "0.2.0"
"""The version of mtsim (also the distribution's: pyproject.toml reads it from here)."""

__all__ = ["Calculator", "Model", "ModelFileError", "Prediction", "Structure", "__version__", "load"]
