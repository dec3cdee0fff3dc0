"""mtsim.workflows / ``mtsim run`` on a local Dask cluster of 2 worker processes: results equal to the serial SDK
bitwise, failures recorded, resume, a killed worker, the documented schema, and PostgreSQL."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

pytest.importorskip("distributed", reason="mtsim.workflows needs the extra: pip install 'mtsim[distributed]'")

import ase.db  # noqa: E402

import mtsim  # noqa: E402
from mtsim import workflows  # noqa: E402
from mtsim.workflows.driver import batches  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BAD = 10


def small_structures(n=20):
    """``n`` rattled 1-2 atom crystals; number ``BAD`` has two atoms 0.01 Å apart (the model rejects it)."""
    prototypes = [("NaCl", "rocksalt", 5.64), ("Si", "diamond", 5.43), ("MgO", "rocksalt", 4.21), ("Cu", "fcc", 3.61)]
    out = []
    for k in range(n):
        name, kind, a = prototypes[k % 4]
        atoms = bulk(name, kind, a=a * (1 + 0.01 * (k // 4)))
        atoms.rattle(0.03, seed=k)
        out.append(atoms)
    if n > BAD:
        out[BAD].positions[-1] = out[BAD].positions[0] + 0.01
    return out


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def model():
    return mtsim.load(device="cpu")


def rows_by_key(name, **query):
    with ase.db.connect(name) as db:
        return {row.structure_key: row for row in db.select(**query)}


def serial_predictions(model, structures, batch_atoms):
    """The serial SDK on the same batches: ``Model.predict`` of each batch; one at a time in a batch that raises."""
    items = list(enumerate(structures))
    expected = {}
    for group in batches(items, batch_atoms):
        if any(k == BAD for k, _ in group):
            expected.update({k: model.predict(a) for k, a in group if k != BAD})
        else:
            expected.update(zip([k for k, _ in group], model.predict([a for _, a in group])))
    return expected


def check_predict_run(db, structures, model, summary):
    assert (summary.done, summary.failed, summary.total) == (len(structures) - 1, 1, len(structures))
    rows = rows_by_key(db, task="predict")
    assert len(rows) == len(structures)
    keys = [workflows.structure_key(a) for a in structures]
    failed = rows[keys[BAD]]
    assert failed.status == "failed" and "overlapping atoms" in failed.error
    expected = serial_predictions(model, structures, 8)
    for k, key in enumerate(keys):
        if k == BAD:
            continue
        row = rows[key]
        assert row.status == "done"
        for name, value in expected[k].as_dict().items():
            np.testing.assert_array_equal(row.data[name], value, err_msg=f"structure {k}, {name}")
            assert np.asarray(row.data[name]).dtype == np.asarray(value).dtype
        assert row.energy_per_atom == expected[k].energy / len(structures[k])


def test_predict_bitwise_failure_resume_retry(client, model, tmp_path):
    structures = small_structures()
    db = str(tmp_path / "results.db")
    summary = workflows.run("predict", structures, db, client=client, batch_atoms=8, progress=False)
    check_predict_run(db, structures, model, summary)
    assert summary.failures[0][0] == f"input[{BAD}]"

    again = workflows.run("predict", structures, db, client=client, batch_atoms=8, progress=False)
    assert (again.done, again.failed, again.skipped) == (0, 0, len(structures))

    before = rows_by_key(db)
    retried = workflows.run("predict", structures, db, client=client, batch_atoms=8, retry_failed=True, progress=False)
    assert (retried.done, retried.failed, retried.skipped) == (0, 1, len(structures) - 1)
    after = rows_by_key(db)
    assert set(after) == set(before) and len(after) == len(structures)  # the failed row replaced, not added
    bad = workflows.structure_key(structures[BAD])
    assert after[bad].id != before[bad].id and after[bad].status == "failed"
    assert all(after[k].id == before[k].id for k in after if k != bad)

    other = workflows.run("predict", structures[:3], db, client=client, options={"allow_overlap": True}, progress=False)
    assert other.done == 3 and other.skipped == 0  # other options: other rows


def test_relax_and_phonon_match_the_serial_sdk(client, model, tmp_path):
    from mtsim.relax import relax
    from mtsim.workflows.tasks import phonon

    structures = small_structures(3)[:2]
    db = tmp_path / "r.db"
    summary = workflows.run("relax", structures, str(db), client=client, options={"fmax": 0.05}, progress=False)
    assert summary.done == 2
    rows = rows_by_key(str(db), task="relax")
    for atoms in structures:
        reference = relax(model, atoms, fmax=0.05, cell=True)
        row = rows[workflows.structure_key(atoms)]
        np.testing.assert_array_equal(row.positions, reference.structure.positions)
        np.testing.assert_array_equal(row.cell[:], reference.structure.cell)
        np.testing.assert_array_equal(row.data["forces"], reference.prediction.forces)
        assert row.converged == reference.converged and row.steps == reference.steps

    options = {"supercell": [2, 2, 2], "mesh": [4, 4, 4], "npoints": 5, "relax": False, "allow_small_supercell": True}
    summary = workflows.run("phonon", structures[:1], str(db), client=client, options=options, progress=False)
    assert summary.done == 1
    row = next(iter(rows_by_key(str(db), task="phonon").values()))
    reference = phonon(model, structures[0], **options)
    for name, value in reference.data.items():
        np.testing.assert_array_equal(row.data[name], value, err_msg=name)
    # NaCl: the polar LO mode is pushed up at Gamma by the model's own Z* and eps_inf
    assert row.lo_to_splitting == reference.summary["lo_to_splitting"] > 0.5
    assert row.nac and row.nac_reason.startswith("insulator")
    files = Path(row.files)
    assert files.parent == tmp_path / "r_files"
    assert {p.name for p in files.iterdir()} == {"band.yaml", "total_dos.dat", "BORN"}
    dos = np.loadtxt(files / "total_dos.dat")
    assert dos.shape[1] == 2 and np.trapezoid(dos[:, 1], dos[:, 0]) == pytest.approx(3 * len(structures[0]), rel=0.05)


def test_schema_is_documented_and_rows_follow_it(client, model, tmp_path):
    doc = (ROOT / "docs" / "workflows.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, flags=re.M))
    columns = set(workflows.COLUMNS) | set(workflows.FAILED_COLUMNS)
    assert columns <= documented, f"undocumented columns: {columns - documented}"
    db = str(tmp_path / "s.db")
    structures = small_structures(12)[8:]  # Si, MgO, BAD (the NaCl one), Cu
    workflows.run("predict", structures, db, client=client, progress=False)
    summary_keys = {"energy_per_atom", "max_force", "pressure"}
    assert all(f"`{key}`" in doc for key in summary_keys)
    model_sha256 = workflows.database.file_sha256(model.path)
    for row in rows_by_key(db).values():
        keys = set(row.key_value_pairs)
        assert set(workflows.COLUMNS) <= keys
        if row.status == "failed":
            assert keys == set(workflows.COLUMNS) | {"error"}
        else:
            assert keys == set(workflows.COLUMNS) | summary_keys
            assert set(row.data) == set(mtsim.model.OUTPUT_NAMES)
        assert row.model_sha256 == model_sha256 and row.model == model.metadata["model_name"]
        assert row.mtsim_version == mtsim.__version__


def test_a_failing_write_leaves_no_partial_batch(tmp_path):
    from mtsim.workflows.database import RunIdentity, connect, write_outcomes
    from mtsim.workflows.tasks import Outcome, Result

    structures = small_structures(3)
    by_key = {workflows.structure_key(a): (f"input[{k}]", a) for k, a in enumerate(structures)}
    identity = RunIdentity("predict", {}, "h" * 64, "m", "s" * 64, "0")
    outcomes = [Outcome(key, "done", Result({"ok": 1.0}, {})) for key in by_key]
    outcomes[2].result.summary = {"energy": 1.0}  # a reserved ASE key: the third write raises
    db = connect(str(tmp_path / "t.db"))
    with pytest.raises(ValueError):
        write_outcomes(db, identity, outcomes, by_key, {})
    assert db.count() == 0


def test_cli_folder_glob_and_scheduler(client, tmp_path):
    from click.testing import CliRunner

    from mtsim.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    structures = small_structures(5)
    for k, atoms in enumerate(structures[:3]):
        atoms.write(folder / f"s{k}.xyz")
    for k, atoms in enumerate(structures[3:]):
        atoms.write(tmp_path / f"g{k}.cif")
    db = tmp_path / "cli.db"
    args = [
        "run",
        "predict",
        str(folder),
        str(tmp_path / "g*.cif"),
        "--db",
        str(db),
        "--scheduler",
        client.scheduler.address,
        "--quiet",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"done now\s+5", result.output)
    assert len(rows_by_key(str(db), status="done")) == 5
    again = CliRunner().invoke(main, args)
    assert re.search(r"skipped \(in database\)\s+5", again.output)
    bad = CliRunner().invoke(main, ["run", "predict", str(tmp_path / "none*.xyz"), "--db", str(db)])
    assert bad.exit_code != 0 and "does not exist" in bad.output
    wrong = CliRunner().invoke(main, ["run", "md", str(folder), "--db", str(db), "-O", "stepz=3"])
    assert wrong.exit_code != 0 and "stepz" in wrong.output


def test_import_mtsim_does_not_import_dask():
    code = (
        "import sys, mtsim, mtsim.cli, mtsim.workflows\n"
        "assert not {'dask', 'distributed'} & set(sys.modules), sorted(m for m in sys.modules if 'dask' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ PostgreSQL
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of Debian's postgresql package in a temporary folder, on 127.0.0.1 only."""
    pytest.importorskip("ase_db_backends", reason="ASE's PostgreSQL backend needs ase-db-backends")
    url = os.environ.get("MTSIM_TEST_POSTGRESQL")
    if url:
        yield url
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql) and MTSIM_TEST_POSTGRESQL is unset")
    bindir = Path(bins[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="mtsim-pg-"))
    port = free_port()
    try:
        if as_postgres:
            shutil.chown(folder, "postgres")
        subprocess.run(
            as_postgres + [str(bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            as_postgres
            + [
                str(bindir / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-w",
                "-l",
                str(folder / "log"),
                "-o",
                f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}",
                "start",
            ],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError, LookupError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        detail = getattr(err, "stderr", b"") or b""
        pytest.skip(f"could not start PostgreSQL: {err} {detail.decode(errors='replace')[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            as_postgres + [str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_postgresql(client, model, postgres_url):
    structures = small_structures()
    summary = workflows.run("predict", structures, postgres_url, client=client, batch_atoms=8, progress=False)
    check_predict_run(postgres_url, structures, model, summary)
    again = workflows.run("predict", structures, postgres_url, client=client, batch_atoms=8, progress=False)
    assert (again.done, again.skipped) == (0, len(structures))


# ------------------------------------------------------------------------------------------ faults (last: it
# leaves the cluster with a restarted worker)
def test_a_killed_worker_loses_nothing(client, tmp_path):
    structures = small_structures(6)
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = [address for address, tasks in client.processing().items() if tasks]
            if busy and busy[0] in pids:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(pids[busy[0]])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    db = str(tmp_path / "k.db")
    summary = workflows.run("md", structures, db, client=client, options={"steps": 60, "interval": 20}, progress=False)
    killer.join()
    assert killed, "no worker was busy to kill"
    assert killed[0] not in client.run(os.getpid).values()  # the nanny started a new process
    assert (summary.done, summary.failed) == (len(structures), 0), summary.failures
    with ase.db.connect(db) as handle:
        keys = [row.structure_key for row in handle.select()]
    assert sorted(keys) == sorted(workflows.structure_key(a) for a in structures)  # each once
