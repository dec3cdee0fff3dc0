"""mtsim.workflows: one task over thousands of structures on Dask, results in an ASE database (``mtsim run``).

>>> from mtsim import workflows                                                        # doctest: +SKIP
>>> summary = workflows.run("phonon", ["structures/"], "results.db", workers=4)       # doctest: +SKIP
>>> print(summary.table())                                                             # doctest: +SKIP

``run`` needs the ``distributed`` extra (``pip install 'mtsim[distributed]'``); importing this package does not
import Dask. Adding a task: write ``compute(model, atoms, **options) -> Result`` and ``register(Task(...))`` (see
``mtsim.workflows.tasks``). Database schema: ``mtsim.workflows.database`` and ``docs/workflows.md``.
"""

from mtsim.workflows.database import COLUMNS, FAILED_COLUMNS
from mtsim.workflows.driver import Interrupted, Summary, run
from mtsim.workflows.inputs import read_inputs, structure_key
from mtsim.workflows.tasks import TASKS, Outcome, Result, Task, compute_batch, register

__all__ = [
    "COLUMNS",
    "FAILED_COLUMNS",
    "TASKS",
    "Interrupted",
    "Outcome",
    "Result",
    "Summary",
    "Task",
    "compute_batch",
    "read_inputs",
    "register",
    "run",
    "structure_key",
]
