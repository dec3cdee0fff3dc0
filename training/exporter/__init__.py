"""Export a trained model to one fixed ONNX graph per precision, forces and stress inside the graph.

``export(model_or_checkpoint, path, precision)`` writes the file described by ``mtsim.onnx_format``
(the ONNX contract of ``shared/design/model-spec.md``).

How (each step is there because the obvious alternative fails with torch 2.13 / onnxscript 0.7 /
onnxruntime 1.3x):

1. A wrapper module runs ``MTModel.forward(..., compute_forces=True)`` in eval mode, so the graph holds the
   energy, its ``torch.autograd.grad`` with respect to positions and strain, and the other heads.
2. ``make_fx(tracing_mode="symbolic")`` traces forward *and* backward into one aten graph (``dynamo=True`` on a
   module calling ``autograd.grad``, ``torch.func`` transforms and the TorchScript exporter all fail). The
   example graph has distinct, non-trivial sizes (n=9 atoms in b=4 structures, e=37 edges) so that no size is
   specialised or tied to another. The graph passes of ``passes.PASSES`` then run in order: full slices and
   their backward are removed (both the identity; they would become zeros + ``ScatterND``), and three exact
   rewrites serve onnxruntime's CPU provider; ``export`` warns about a pass that rewrote nothing.
   ``aten.native_layer_norm`` and its backward are decomposed during tracing into plain arithmetic in the
   model's dtype: onnxruntime's ``LayerNormalization`` keeps float32 statistics, which the backward then mixes
   with doubles (float64 error ~1e-8).
3. ``torch.onnx.export(graph_module, dynamo=True, optimize=False)`` with dynamic n, e, b, kr, ks. The onnxscript
   optimizer is off: its rewrites delete ``x + eps`` terms (the equivariant layer norm's ``+ eps``).
4. The ONNX model is post-processed: IR version pinned (``IR_VERSION``; onnx 1.23 writes IR 14 which
   onnxruntime 1.31 refuses), metadata added (also the session options the rewritten graph needs,
   ``mtsim.onnx_format.KEY_SESSION_OPTIONS``), and ``check_graph`` run: no ``ScatterND`` with
   ``reduction="add"`` (onnxruntime's CPU kernel races with more than one thread: forces wrong and different
   every run; the model sums over edges with ``SlotSum`` and over slots, which become ``Gather`` + ``ReduceSum``,
   and over atoms with ``scatter_add``, which becomes ``ScatterElements``), every input and output dim that the
   contract makes dynamic is still symbolic, and every float tensor (inputs, outputs, initializers, constants,
   casts) has the file's precision.

Modules: ``tracing`` (example inputs, make_fx, ``trace``), ``passes`` (the graph passes and their shape
predicates), ``translations`` (onnxscript translations), ``onnx_file`` (``export``, metadata, writing),
``checks`` (``check_graph``).
"""

from mtsim.training.exporter.checks import ExportError, check_graph
from mtsim.training.exporter.onnx_file import IR_VERSION, OPSET, export, export_metadata, untrained_outputs
from mtsim.training.exporter.passes import PASSES, GraphPass, GraphPassError
from mtsim.training.exporter.tracing import example_inputs, trace

__all__ = [
    "IR_VERSION",
    "OPSET",
    "PASSES",
    "ExportError",
    "GraphPass",
    "GraphPassError",
    "check_graph",
    "example_inputs",
    "export",
    "export_metadata",
    "trace",
    "untrained_outputs",
]
