"""Checkpoint -> ONNX conversion and inspection.

* ``mtsim.onnx_format``: the ONNX file format (names, metadata keys, named errors) and the torch-free
  ``check_onnx_file`` / ``read_onnx_file``;
* ``mtsim.converters.validate``: ``validate_export`` (ONNX vs PyTorch on a built-in structure panel; needs torch);
* ``mtsim.converters.cli``: the ``mtsim convert`` and ``mtsim info`` commands.

The export itself is ``mtsim.training.export``.
"""
