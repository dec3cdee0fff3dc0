"""Contract checks of an exported ONNX graph (``check_graph``)."""

from __future__ import annotations

import os

from mtsim.onnx_format import (
    DTYPE_NAMES,
    INPUT_NAMES,
    INPUT_SHAPES,
    ONNX_DTYPES,
    OUTPUT_NAMES,
    OUTPUT_SHAPES,
    _all_nodes,
    _shape_of,
)


class ExportError(RuntimeError):
    """The exported graph breaks the ONNX contract (e.g. a racy ScatterND(add), static dims, wrong dtypes)."""


def check_graph(model, precision: str | None = None) -> None:
    """Raise ``ExportError`` if the ONNX ``model`` (a ``ModelProto`` or a path) breaks the export rules:

    * a ``ScatterND`` with ``reduction="add"`` (racy on onnxruntime's CPU provider);
    * an input or output dim that the contract makes dynamic (n, e, b) is fixed, or a fixed dim has the wrong
      size (``torch.onnx.export`` silently falls back to static shapes);
    * wrong input/output names or order;
    * (with ``precision``) a float tensor of the other precision among inputs, outputs, initializers,
      ``Constant`` nodes and ``Cast`` targets.
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
    problems = []
    for node in _all_nodes(model):
        if node.op_type == "ScatterND":
            reduction = next(
                (onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "reduction"), b"none"
            )
            reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
            if reduction != "none":
                problems.append(
                    f"node {node.name!r} is ScatterND(reduction={reduction!r}), which races on onnxruntime's CPU "
                    f"provider with more than one thread; write the reduction with Tensor.scatter_add so that it "
                    f"becomes ScatterElements"
                )
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    names = tuple(v.name for v in inputs)
    if names != INPUT_NAMES:
        problems.append(f"inputs are {list(names)}, expected {list(INPUT_NAMES)}")
    if tuple(v.name for v in graph.output) != OUTPUT_NAMES:
        problems.append(f"outputs are {[v.name for v in graph.output]}, expected {list(OUTPUT_NAMES)}")
    for values, shapes, kind in ((inputs, INPUT_SHAPES, "input"), (graph.output, OUTPUT_SHAPES, "output")):
        for value in values:
            if value.name not in shapes:
                continue
            shape, expected = _shape_of(value), shapes[value.name]
            if len(shape) != len(expected):
                problems.append(f"{kind} {value.name!r} has rank {len(shape)}, expected shape {expected}")
                continue
            for got, want in zip(shape, expected):
                if isinstance(want, str) and not isinstance(got, str):
                    problems.append(
                        f"{kind} {value.name!r} has a static dim {got} where {want!r} must be "
                        f"dynamic (shape {shape}); the exporter specialised it"
                    )
                elif isinstance(want, int) and got != want:
                    problems.append(f"{kind} {value.name!r} has shape {shape}, expected {expected}")
    if precision is not None:
        problems += _precision_problems(model, precision)
    if problems:
        raise ExportError("exported ONNX graph breaks the contract:\n  " + "\n  ".join(problems))


FLOATS = ("float32", "float64", "float16", "bfloat16")


def _precision_problems(model, precision: str) -> list[str]:
    import onnx

    bad_types = {ONNX_DTYPES[name] for name in FLOATS if name != precision}
    problems = []
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        elem = value.type.tensor_type.elem_type
        if elem in bad_types:
            problems.append(f"{value.name!r} is {DTYPE_NAMES[elem]}, the file is {precision}")
    for init in graph.initializer:
        if init.data_type in bad_types:
            problems.append(f"initializer {init.name!r} is {DTYPE_NAMES[init.data_type]}, the file is {precision}")
    for node in _all_nodes(model):
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.type == onnx.AttributeProto.TENSOR:
                if attribute.t.data_type in bad_types:
                    problems.append(f"Constant {node.name!r} is {DTYPE_NAMES[attribute.t.data_type]}")
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in bad_types:
                problems.append(f"Cast {node.name!r} to {DTYPE_NAMES[attribute.i]}")
            if node.op_type == "ConstantOfShape" and attribute.type == onnx.AttributeProto.TENSOR:
                if attribute.t.data_type in bad_types:
                    problems.append(f"ConstantOfShape {node.name!r} is {DTYPE_NAMES[attribute.t.data_type]}")
    return problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
