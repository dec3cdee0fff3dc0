"""``mtsim convert`` (checkpoint -> validated ONNX) and ``mtsim info`` (inspect an ONNX file).

Importing this module needs neither torch nor onnx: ``convert`` imports the training code inside its body and
``info`` reads files with ``onnx`` when installed, else with onnxruntime.
"""

from __future__ import annotations

import json
import os
import textwrap
import time

import click

from mtsim.onnx_format import OnnxFormatError, check_mtsim_metadata, read_onnx_file


def _error(err: Exception) -> click.ClickException:
    return click.ClickException(f"{type(err).__name__}: {err}")


@click.command("convert")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="ONNX file to write [default: CHECKPOINT's stem + .PRECISION.onnx]",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="float type of every input, output and weight of the file",
)
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="compare the file with PyTorch on the built-in structure panel (removes the file on failure)",
)
@click.option("--all-rows", is_flag=True, help="print every panel comparison, not only the worst per output")
def convert(checkpoint: str, output: str | None, precision: str, validate: bool, all_rows: bool) -> None:
    """Export CHECKPOINT to a fixed-graph ONNX file (forces and stress inside the graph) and validate it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException("mtsim convert needs PyTorch: pip install 'mtsim[train]'") from None
    from mtsim.training.checkpoint import CheckpointError, file_sha256, load_checkpoint
    from mtsim.training.exporter import ExportError, export

    if output is None:
        stem = os.path.splitext(checkpoint)[0]
        output = f"{stem}.{precision}.onnx"
    try:
        model = load_checkpoint(checkpoint)
        sha256 = file_sha256(checkpoint)
    except CheckpointError as err:
        raise _error(err) from None
    click.echo(
        f"exporting {checkpoint} ({model.config.preset}, {model.num_parameters():,} parameters) "
        f"-> {output} [{precision}]"
    )
    start = time.perf_counter()
    try:
        export(model, output, precision, checkpoint_sha256=sha256)
    except ExportError as err:
        raise _error(err) from None
    info = read_onnx_file(output)
    click.echo(
        f"wrote {output}: {os.path.getsize(output) / 1e6:.1f} MB, {info.node_count} nodes, opset "
        f"{info.opset}, in {time.perf_counter() - start:.1f} s"
    )
    if not validate:
        click.echo("validation skipped (--no-validate)")
        return
    from mtsim.converters.validate import validate_export

    report = validate_export(model, output)
    click.echo(report.table("all" if all_rows else "worst"))
    click.echo(report.summary())
    if not report.passed:
        failed = report.failures
        lines = [
            f"  {c.output} on {c.case}: error {c.error:.2e} (tolerance {c.tolerance:g})"
            + ("" if c.finite else ", non-finite")
            + ("" if c.deterministic else ", non-deterministic")
            for c in failed[:10]
        ]
        os.remove(output)
        raise click.ClickException(
            f"the exported graph does not reproduce PyTorch; removed {output} "
            f"({len(failed)} failed checks):\n" + "\n".join(lines)
        )


def _shape(shape: tuple) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _describe_elements(value: str) -> str:
    try:
        numbers = [int(z) for z in value.split(",")]
    except ValueError:
        return value
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"Z = {numbers[0]}..{numbers[-1]} ({len(numbers)} elements)"
    return value


def _render_json(value: str, render) -> str:
    """``render(json.loads(value))``, or ``value`` itself when it is not the JSON ``render`` expects."""
    try:
        return render(json.loads(value))
    except (ValueError, KeyError, TypeError):
        return value


def _describe_repulsion(value: str) -> str:
    """One line for the ``short_range_repulsion`` metadata."""
    if value == "none":
        return "none"
    return _render_json(
        value, lambda form: f"ZBL, switched off between {form['inner']} and {form['outer']} x the sum of covalent radii"
    )


def _describe_energy_offsets(value: str | None) -> str:
    """One line for the ``energy_offsets`` metadata (absent: the scale of the labels, never moved)."""
    if value is None:
        return "as labelled (not moved)"
    return _render_json(
        value,
        lambda record: (
            f"moved by per-element offsets ({len(record['eV'])} elements, from {record['file']}; see --json)"
        ),
    )


def describe_training_data(value: str) -> list[str]:
    """Readable lines for the ``training_data`` metadata: one per training stage, oldest first (how many structures
    carry each label, and the files), then the latest stage's description, wrapped. A JSON record of stages is
    what ``mtsim.training.trainer`` writes (``description``, ``files``, ``labels``, ``base`` = the stage before);
    other text is returned as it is (cut to 100 characters)."""
    try:
        record = json.loads(value)
    except ValueError:
        record = None
    stages = []
    while isinstance(record, dict) and isinstance(record.get("labels"), dict):
        stages.append(record)
        record = record.get("base")
    if not stages:
        return [value if len(value) <= 100 else f"{value[:97]}... (see --json)"]
    stages.reverse()
    lines = [f"{len(stages)} stage(s), oldest first; structures per label, then files (full record: --json)"]
    for k, stage in enumerate(stages, 1):
        by_count: dict[int, list[str]] = {}
        for label, count in stage["labels"].items():
            by_count.setdefault(int(count), []).append(label)
        counts = ", ".join(
            f"{'/'.join(labels)} {count:,}" for count, labels in sorted(by_count.items(), key=lambda item: -item[0])
        )
        files = [entry["file"] if isinstance(entry, dict) else str(entry) for entry in stage.get("files", [])]
        lines.append(f"stage {k}: {counts}")
        lines += textwrap.wrap(", ".join(files), 90, initial_indent="  files: ", subsequent_indent="    ")
    if stages[-1].get("description"):
        lines += textwrap.wrap(
            stages[-1]["description"], 90, initial_indent=f"stage {len(stages)} description: ", subsequent_indent="  "
        )
    return lines


@click.command("info")
@click.argument("model", required=False, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="print everything as one JSON object")
@click.option(
    "--reader",
    type=click.Choice(["onnx", "onnxruntime"]),
    default="onnx",
    show_default=True,
    help="library that reads the file (falls back to onnxruntime when onnx is not installed)",
)
def info(model: str | None, as_json: bool, reader: str) -> None:
    """Print metadata, inputs, outputs, opset, node and parameter counts of an mtsim ONNX file (default: the
    bundled model)."""
    try:
        if model is None:
            from mtsim.model import find_model_file

            model = str(find_model_file(None, None))
        data = check_mtsim_metadata(read_onnx_file(model, prefer=reader))
    except OnnxFormatError as err:
        raise _error(err) from None
    meta = data.metadata
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": data.path,
                    "reader": data.reader,
                    "metadata": meta,
                    "inputs": [{"name": n, "type": t, "shape": list(s)} for n, t, s in data.inputs],
                    "outputs": [{"name": n, "type": t, "shape": list(s)} for n, t, s in data.outputs],
                    "opset": data.opset,
                    "ir_version": data.ir_version,
                    "node_count": data.node_count,
                    "parameter_count": data.parameter_count,
                    "unavailable": data.unavailable,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return

    def row(key: str, value) -> None:
        click.echo(f"  {key:<26} {value}")

    size = os.path.getsize(data.path)
    click.echo(f"{data.path} ({size / 1e6:.1f} MB, read with {data.reader})")
    click.echo("model")
    row("format", f"{meta['mtsim_format']} version {meta['mtsim_format_version']} ({meta['input_layout']})")
    row("name", f"{meta['model_name']} (preset {meta['model_preset']})")
    row("precision", meta["precision"])
    row("cutoff", f"{meta['cutoff']} Å")
    row("short-range repulsion", _describe_repulsion(meta.get("short_range_repulsion", "none")))
    row("energy scale", _describe_energy_offsets(meta.get("energy_offsets")))
    row("elements", _describe_elements(meta["elements"]))
    row("parameters (trained)", f"{int(meta['parameter_count']):,}")
    lines = describe_training_data(meta["training_data"])
    row("training data", lines[0])
    for line in lines[1:]:
        row("", line)
    row("source checkpoint sha256", meta["source_checkpoint_sha256"])
    row("weights sha256", meta.get("weights_sha256", "none (not verified: re-export with `mtsim convert`)"))
    row("written by mtsim", meta["mtsim_version"])
    click.echo("metadata")
    for key, value in meta.items():
        row(key, value if len(value) <= 100 else f"{value[:97]}... ({len(value)} characters; see --json)")
    try:
        units = json.loads(meta["units"])
    except ValueError:
        units = {}
    click.echo("inputs")
    for name, dtype, shape in data.inputs:
        row(name, f"{dtype:<8} {_shape(shape):<10} {units.get(name, '')}")
    click.echo("outputs")
    for name, dtype, shape in data.outputs:
        row(name, f"{dtype:<8} {_shape(shape):<10} {units.get(name, '')}")
    click.echo("graph")
    missing = "not available (install the onnx package to read it)"
    row("opset", data.opset if data.opset is not None else missing)
    row("IR version", data.ir_version if data.ir_version is not None else missing)
    row("nodes", f"{data.node_count:,}" if data.node_count is not None else missing)
    row("parameters (initializers)", f"{data.parameter_count:,}" if data.parameter_count is not None else missing)
    if data.op_counts:
        top = sorted(data.op_counts.items(), key=lambda kv: -kv[1])
        row("operators", ", ".join(f"{op} {count}" for op, count in top))
    if data.unavailable:
        click.echo(f"not read with {data.reader}: {', '.join(data.unavailable)}")
