"""The mtsim ONNX file format: metadata keys and version checks (torch-free, shared by SDK and converters)."""

from __future__ import annotations

ONNX_FORMAT = "mtsim-onnx"
ONNX_FORMAT_VERSION = 1
REQUIRED_METADATA = ("mtsim_format", "mtsim_format_version", "input_layout", "cutoff", "elements", "precision")


class ModelFileError(ValueError):
    """A model file is missing, corrupt, not an mtsim model, or of an unsupported format version."""


def check_metadata(metadata: dict[str, str], path) -> dict[str, str]:
    """Return ``metadata`` if it describes an mtsim ONNX model this version reads, else raise ``ModelFileError``."""
    if metadata.get("mtsim_format") != ONNX_FORMAT:
        raise ModelFileError(f"{path} is not an mtsim model (its metadata has no mtsim_format={ONNX_FORMAT!r})")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelFileError(f"{path}: mtsim metadata is incomplete, missing {missing}")
    version = metadata["mtsim_format_version"]
    if version != str(ONNX_FORMAT_VERSION):
        newer = version.isdigit() and int(version) > ONNX_FORMAT_VERSION
        raise ModelFileError(
            f"{path} has mtsim ONNX format version {version}; this mtsim reads version {ONNX_FORMAT_VERSION}"
            + (" (the file is newer: upgrade mtsim)" if newer else "")
        )
    if metadata["input_layout"] != "flat-edges":
        raise ModelFileError(f"{path}: unsupported input layout {metadata['input_layout']!r}")
    return metadata
