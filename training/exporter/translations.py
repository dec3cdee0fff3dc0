"""onnxscript translations that replace ``torch.onnx.export``'s defaults for two aten ops."""

from __future__ import annotations

import numpy as np
import torch


def custom_translations() -> dict:
    """aten op -> onnxscript function, for ``torch.onnx.export(custom_translation_table=...)``.

    ``aten.scalar_tensor``: the default turns the Python float into a float32 ``Constant`` and then casts it, so
    a float64 file would carry every scalar constant (1/sqrt(d), GELU's coefficients, eps, ...) rounded to
    float32 (~2e-8 relative error). Here the constant is created in the requested dtype directly.
    ``aten.eye`` (the dielectric's identity): a constant, instead of the default's float ``Range`` + compares.
    """
    from onnxscript import ir
    from onnxscript import opset18 as op

    def scalar_tensor(s: float, dtype: int = 1, layout: str = "", device: str = "", pin_memory: bool = False):
        numpy_dtype = ir.DataType(dtype if dtype not in (None, -1) else 1).numpy()
        return op.Constant(value=ir.tensor(np.array(s, dtype=numpy_dtype)))

    def eye(n: int, dtype: int = 1, layout: str = "", device: str = "", pin_memory: bool = False):
        numpy_dtype = ir.DataType(dtype if dtype not in (None, -1) else 1).numpy()
        return op.Constant(value=ir.tensor(np.eye(n, dtype=numpy_dtype)))

    return {torch.ops.aten.scalar_tensor.default: scalar_tensor, torch.ops.aten.eye.default: eye}
