"""The Dask side of ``mtsim run``: the worker plugin holding the model, the function each Dask task runs, and the
client (a ``LocalCluster`` of worker processes, or an existing scheduler). Needs ``mtsim[distributed]``."""

from __future__ import annotations

import contextlib
import os

from distributed import Client, LocalCluster, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from mtsim.workflows.tasks import compute_batch

PLUGIN = "mtsim-model"
_MODELS: dict = {}
"""Models loaded in this worker process, by (model, device, precision, threads): a plugin registered again by the
next run of the same model reuses it."""


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker (``mtsim.load(model, device, precision, threads)``) and checks that the
    file it opened is the one the driver hashed."""

    name = PLUGIN

    def __init__(self, model, device: str, precision: str | None, threads: int | None, sha256: str):
        self.model_arg, self.device, self.precision = model, device, precision
        self.threads, self.sha256 = threads, sha256
        self.model = None

    def setup(self, worker=None):
        import mtsim
        from mtsim.workflows.database import file_sha256

        settings = (str(self.model_arg), self.device, self.precision, self.threads)
        model = _MODELS.get(settings) or mtsim.load(
            self.model_arg, device=self.device, precision=self.precision, threads=self.threads
        )
        found = file_sha256(model.path)
        if found != self.sha256:
            raise RuntimeError(
                f"the worker's model file {model.path} (sha256 {found}) is not the driver's "
                f"(sha256 {self.sha256}): give every worker the same model file"
            )
        self.model = _MODELS[settings] = model


def run_on_worker(task, options: dict, items: list) -> list:
    """One Dask task: ``task`` on ``items`` [(key, ase.Atoms)] with the worker's model; a list of ``Outcome``."""
    return compute_batch(task, get_worker().plugins[PLUGIN].model, options, items)


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None, client):
    """``client`` itself, a client of the scheduler at ``scheduler``, or one of a new ``LocalCluster`` of
    ``workers`` processes with one thread each (closed on exit)."""
    if client is not None:
        yield client
        return
    if scheduler is not None:
        with Client(scheduler) as own:
            yield own
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as own:
            yield own


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def worker_threads(client) -> int:
    """Threads over all workers the scheduler knows now."""
    return sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
