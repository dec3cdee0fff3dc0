"""The driver of ``mtsim run``: reads the inputs, skips what the database holds, sends batches of structures to Dask
and writes every returned row itself, one transaction per batch.

Only this process writes the database and the per-structure files: the workers return results. Each batch is
submitted once and each Dask future yields its result once, so a worker that dies mid-task (Dask runs the task
again elsewhere) cannot cause a second row; the driver also keeps the keys it wrote and drops any repeat.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtsim.workflows.database import (
    RunIdentity,
    connect,
    existing_rows,
    file_sha256,
    options_hash,
    write_outcomes,
)
from mtsim.workflows.inputs import URL_PREFIXES, read_inputs, structure_key
from mtsim.workflows.tasks import TASKS, Outcome, Task


@dataclass
class Summary:
    """What a run did: ``total`` distinct structures (``duplicates`` repeated inputs left out), ``done`` and
    ``failed`` in this run, ``skipped`` (done before, or failed before and not retried), ``seconds`` of wall time,
    ``failures`` [(source, error)] of this run, ``interrupted`` by Ctrl-C."""

    task: str
    db: str
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)
    interrupted: bool = False

    @property
    def rate(self) -> float:
        """Structures finished (done or failed) per second in this run."""
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        rows = [
            ("task", self.task),
            ("database", self.db),
            ("structures", self.total),
            ("done now", self.done),
            ("failed now", self.failed),
            ("skipped (in database)", self.skipped),
            ("duplicate inputs", self.duplicates),
            ("wall time", f"{self.seconds:.1f} s"),
            ("rate", f"{self.rate:.2f} structures/s"),
        ]
        if self.interrupted:
            rows.append(("interrupted", "yes: rerun the same command to resume"))
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        for source, error in self.failures[:10]:
            lines.append(f"failed: {source}: {error}")
        if len(self.failures) > 10:
            lines.append(f"... and {len(self.failures) - 10} more failures (query status=failed)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``summary`` says what was written (every written row is complete)."""

    def __init__(self, summary: Summary):
        super().__init__("interrupted")
        self.summary = summary


class Progress:
    """done / failed / running / left, rate and ETA on stderr: one line redrawn on a terminal, else a line every
    ``every`` seconds."""

    def __init__(self, total: int, enabled: bool, stream=None, every: float | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.enabled = total, enabled
        self.every = every if every is not None else (0.5 if self.tty else 10.0)
        self.start = self.last = time.monotonic()

    def show(self, done: int, failed: int, running: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < self.every):
            return
        self.last = now
        finished = done + failed
        rate = finished / (now - self.start) if now > self.start else 0.0
        left = self.total - finished
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        line = f"{done} done, {failed} failed, {running} running, {left - running} left | {rate:.2f}/s | ETA {eta}"
        self.stream.write(("\r" + line + "\x1b[K" + ("\n" if final else "")) if self.tty else line + "\n")
        self.stream.flush()


def batches(items: list, batch_atoms: int) -> list[list]:
    """Consecutive ``items`` [(key, atoms)] grouped until a group holds ``batch_atoms`` atoms (at least one each)."""
    groups, current, atoms = [], [], 0
    for item in items:
        if current and atoms + len(item[1]) > batch_atoms:
            groups.append(current)
            current, atoms = [], 0
        current.append(item)
        atoms += len(item[1])
    return groups + ([current] if current else [])


def run(
    task: str | Task,
    inputs,
    db: str,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    model=None,
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    options: dict | None = None,
    retry_failed: bool = False,
    files=None,
    batch_atoms: int | None = None,
    select: str | None = None,
    progress: bool = True,
) -> Summary:
    """Run ``task`` (a registered name or a :class:`Task`) on every structure of ``inputs`` and record one row per
    structure in the ASE database ``db`` (a file or a ``postgresql://`` URL); returns a :class:`Summary`.

    Where: ``client`` (a ``distributed.Client``), else ``scheduler`` (an address), else a ``LocalCluster`` of
    ``workers`` processes (default: one per CPU core) with ``threads`` onnxruntime threads each (default: the
    cores shared out). ``model``/``device``/``precision``: as ``mtsim.load``. ``options``: the task's options
    (see ``TASKS[name].defaults``). Rows already done are skipped; failed ones are rerun with ``retry_failed``.
    ``files``: folder for per-structure files (default: beside a database file, ``<name>_files``).
    ``batch_atoms``: atoms per Dask task (default: the task's). ``select``: ASE selection for database inputs.
    Ctrl-C raises :class:`Interrupted` (a ``KeyboardInterrupt``) after the database is left consistent.
    """
    import mtsim

    spec = _task(task)
    options = json.loads(json.dumps(spec.options(options)))  # what is hashed is what runs (tuples -> lists)
    if workers is not None and (scheduler is not None or client is not None):
        raise ValueError("give either workers (a local cluster) or scheduler/client, not both")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    name, sha256, checkpoint = model_identity(model, precision)
    identity = RunIdentity(
        spec.name, options, options_hash(spec.name, options, sha256), name, sha256, mtsim.__version__, checkpoint
    )
    structures: dict[str, tuple[str, object]] = {}
    summary = Summary(spec.name, str(db))
    for source, atoms in read_inputs(inputs, select, exclude=db):
        atoms = atoms.copy()
        atoms.calc = None
        key = structure_key(atoms)
        if key in structures:
            summary.duplicates += 1
        else:
            structures[key] = (source, atoms)
    summary.total = len(structures)
    database = connect(str(db))
    existing = existing_rows(database, identity)
    replace = {k: row_id for k, (row_id, status) in existing.items() if status == "failed" and retry_failed}
    pending = [(k, atoms) for k, (_, atoms) in structures.items() if k not in existing or k in replace]
    summary.skipped = summary.total - len(pending)
    folder = _files_folder(db, files, spec, identity) if spec.write_files else None
    start = time.monotonic()
    try:
        if pending:
            _drive(
                spec,
                options,
                identity,
                batches(pending, batch_atoms or spec.batch_atoms),
                structures,
                replace,
                database,
                folder,
                summary,
                Progress(len(pending), progress),
                workers,
                scheduler,
                client,
                model,
                device,
                precision,
                threads,
            )
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.seconds = time.monotonic() - start
        raise Interrupted(summary) from None
    summary.seconds = time.monotonic() - start
    return summary


_IDENTITIES: dict = {}


def model_identity(model, precision) -> tuple[str, str, str | None]:
    """(model name, sha256 of the file, source checkpoint sha256 or None) of the model ``mtsim.load`` opens; the
    model is loaded once per process (the driver's check that it opens) and its file hashed at every call."""
    import mtsim

    key = (str(model), precision)
    if key not in _IDENTITIES:
        loaded = mtsim.load(model, device="cpu", precision=precision)
        _IDENTITIES[key] = (
            loaded.path,
            loaded.metadata.get("model_name", loaded.path.name),
            loaded.metadata.get("source_checkpoint_sha256"),
            file_sha256(loaded.path),
        )
    path, name, checkpoint, sha256 = _IDENTITIES[key]
    if file_sha256(path) != sha256:  # the file changed since: load it again
        del _IDENTITIES[key]
        return model_identity(model, precision)
    return name, sha256, checkpoint


def _task(task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def _files_folder(db, files, spec: Task, identity: RunIdentity) -> Path:
    if files is None:
        if str(db).startswith(URL_PREFIXES):
            raise ValueError(f"task {spec.name!r} writes files: with a database URL, give the folder (files=...)")
        files = Path(db).with_name(Path(db).stem + "_files")
    return Path(files)


def _drive(
    spec,
    options,
    identity,
    groups,
    structures,
    replace,
    database,
    folder,
    summary,
    progress,
    workers,
    scheduler,
    client,
    model,
    device,
    precision,
    threads,
) -> None:
    from distributed import as_completed

    from mtsim.workflows.cluster import ModelPlugin, dask_client, default_workers, run_on_worker, worker_threads

    if client is None and scheduler is None:
        workers = workers or default_workers()
        threads = threads or max(1, default_workers() // workers)
    written: set[str] = set()
    with dask_client(workers, scheduler, client) as dask:
        dask.register_plugin(ModelPlugin(model, device, precision, threads, identity.model_sha256))
        queue = iter(groups)
        inflight: dict = {}
        finished = as_completed()
        checked, window = 0.0, 4

        def submit_more():
            nonlocal checked, window
            if time.monotonic() - checked > 5.0:  # follow clusters that grow (dask-jobqueue adapt)
                window, checked = max(4, 2 * worker_threads(dask)), time.monotonic()
            while len(inflight) < window:
                group = next(queue, None)
                if group is None:
                    return
                future = dask.submit(run_on_worker, spec, options, group, pure=False)
                inflight[future] = group
                finished.add(future)

        try:
            submit_more()
            for future in finished:
                group = inflight.pop(future)
                try:
                    outcomes = future.result()
                except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: the task killed its workers
                    outcomes = [
                        Outcome(key, "failed", error=f"the Dask task failed: {type(err).__name__}: {err}")
                        for key, _ in group
                    ]
                future.release()
                outcomes = [o for o in outcomes if o.key not in written]
                _write(spec, identity, outcomes, structures, replace, database, folder)
                for o in outcomes:
                    written.add(o.key)
                    if o.status == "done":
                        summary.done += 1
                    else:
                        summary.failed += 1
                        summary.failures.append((structures[o.key][0], o.error))
                submit_more()
                progress.show(summary.done, summary.failed, sum(len(g) for g in inflight.values()))
        finally:
            for future in inflight:
                future.cancel()
    progress.show(summary.done, summary.failed, 0, final=True)


def _write(spec, identity, outcomes, structures, replace, database, folder) -> None:
    """Files first (a rerun overwrites files of a row that was never written), then the rows in one transaction."""
    for o in outcomes:
        if o.status == "done" and spec.write_files is not None and o.result.files is not None:
            path = folder / f"{o.key[:16]}-{identity.options_hash[:8]}"
            path.mkdir(parents=True, exist_ok=True)
            spec.write_files(path, o.result.files)
            o.result.summary["files"] = str(path)
    write_outcomes(database, identity, outcomes, structures, replace)
