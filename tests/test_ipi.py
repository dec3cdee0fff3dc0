"""mtsim.ipi and ``mtsim ipi``: the i-PI socket protocol against scripted fake servers, ASE's server, and the real
i-PI (PyPI ``ipi``, a test-only dependency) running NVE, path-integral (batched) and field-driven ``eda-nve`` MD."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from analytic import PairModel
from ase.build import bulk

from mtsim import ipi
from mtsim.field import field_forces
from mtsim.ipi import ConnectionLost, Driver, IPIError, ProtocolError
from mtsim.units import BOHR, FS, HARTREE

CHARGES = {11: 1.1, 17: -1.1}
M = np.array([[1.0, 0.3, -0.2], [0.1, 0.8, 0.25], [-0.15, 0.05, 1.2]])
W = np.array([0.2, -0.1, 0.3])


class AnisotropicBorn(PairModel):
    """PairModel with non-symmetric, position-dependent Born charges that keep the acoustic sum rule:
    Z[i,a,b] = q_i M[a,b] + 0.05 (r_i - r_mean)_a W_b (charges sum to zero per structure)."""

    def evaluate(self, inputs):
        out = super().evaluate(inputs)
        pos, batch = inputs["positions"], inputs["batch"]
        counts = np.bincount(batch)
        mean = np.zeros((len(counts), 3))
        np.add.at(mean, batch, pos)
        centred = pos - (mean / counts[:, None])[batch]
        out["born_charges"] = out["charges"][:, None, None] * M + 0.05 * centred[:, :, None] * W[None, None, :]
        return out


def nacl(repeat=(2, 2, 2), primitive=True, rattle=0.05):
    """NaCl; the primitive fcc cell in i-PI's orientation (a along x, b in the xy plane: h = cell.T is upper
    triangular, not symmetric) by default, so that cell transposes matter."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=not primitive) * repeat
    atoms.set_cell(atoms.cell.cellpar(), scale_atoms=True)
    atoms.rattle(rattle, seed=1)
    return atoms


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    """Compile the neighbour list once up front, so that no test waits for the JIT inside a socket exchange."""
    PairModel().predict(nacl())


# ================================================================================================ framing helpers
def header(name: str) -> bytes:
    return name.ljust(12).encode()


def recv_exact(conn, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise EOFError(f"driver closed after {len(data)} of {n} bytes")
        data += part
    return data


def status(conn) -> str:
    conn.sendall(header("STATUS"))
    return recv_exact(conn, 12).decode().strip()


def init(conn, text: str = "") -> None:
    conn.sendall(header("INIT") + np.int32(0).tobytes() + np.int32(len(text)).tobytes() + text.encode())


def posdata(conn, h, positions) -> None:
    """One structure as i-PI sends it: h (bohr, columns = lattice vectors), inverse, n, positions (bohr)."""
    h = np.asarray(h, dtype=np.float64)
    conn.sendall(
        header("POSDATA")
        + h.tobytes()
        + np.linalg.inv(h).tobytes()
        + np.int32(len(positions)).tobytes()
        + np.asarray(positions, dtype=np.float64).tobytes()
    )


def getforce(conn, n: int):
    conn.sendall(header("GETFORCE"))
    assert recv_exact(conn, 12) == header("FORCEREADY")
    energy = np.frombuffer(recv_exact(conn, 8), np.float64)[0]
    assert np.frombuffer(recv_exact(conn, 4), np.int32)[0] == n
    forces = np.frombuffer(recv_exact(conn, 24 * n), np.float64).reshape(n, 3)
    virial = np.frombuffer(recv_exact(conn, 72), np.float64).reshape(3, 3)
    length = np.frombuffer(recv_exact(conn, 4), np.int32)[0]
    return energy, forces, virial, json.loads(recv_exact(conn, length).decode())


def wait_closed(conn) -> None:
    """Keep the connection open until the driver closes it (a hanging driver would hang here)."""
    try:
        conn.recv(1)
    except OSError:  # timeout, or a reset when the driver closed with unread data
        pass


def to_ipi(atoms):
    """(h, positions) in bohr as i-PI would send them for an ase.Atoms."""
    return np.asarray(atoms.cell).T / BOHR, atoms.positions / BOHR


class FakeServer:
    """A scripted i-PI server on a UNIX socket (or TCP loopback): ``script(conn)`` runs in a thread for each
    accepted connection in turn; the test runs the driver in the main thread. Errors of scripts are re-raised."""

    def __init__(self, tmp_path, *scripts, inet=False):
        self.scripts = list(scripts)
        self.address = None
        if inet:
            self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.server.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
            self.kwargs = {"address": self.address}
        else:
            self.path = str(tmp_path / "ipi_fake")
            self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.server.bind(self.path)
            self.kwargs = {"unix": self.path}
        self.server.listen(1)
        self.server.settimeout(10)
        self.errors = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        for script in self.scripts:
            try:
                conn, _ = self.server.accept()
            except OSError as err:
                self.errors.append(err)
                return
            conn.settimeout(60)  # generous: the first prediction may JIT-compile the neighbour list
            try:
                script(conn)
            except Exception as err:  # reported by close()
                self.errors.append(err)
            finally:
                conn.close()

    def close(self):
        self.thread.join(timeout=15)
        self.server.close()
        if not self.address:
            os.unlink(self.path)
        if self.errors:
            raise self.errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def driver(model, atoms, server, **options):
    options = {"timeout": 2.0, "idle_timeout": 10.0, "connect_timeout": 5.0, **options}
    return Driver(model, atoms, **server.kwargs, **options)


# ================================================================================================ units and framing
def test_parse_address_and_unix_path():
    assert ipi.parse_address("localhost:31415") == ("localhost", 31415)
    assert ipi.parse_address("[::1]:2000") == ("::1", 2000)
    assert ipi.parse_address("2000") == ("localhost", 2000)
    assert ipi.parse_address(("127.0.0.1", 5)) == ("127.0.0.1", 5)
    for bad in ("host:port", "host:0", "host:70000"):
        with pytest.raises(ValueError, match="bad i-PI address"):
            ipi.parse_address(bad)
    assert ipi.unix_path("mtsim") == "/tmp/ipi_mtsim"
    assert ipi.unix_path("/run/x/sock") == "/run/x/sock"
    with pytest.raises(ValueError, match="not both"):
        Driver(PairModel(), nacl(), address="localhost:1", unix="x")


def test_one_step_framing_and_atomic_units(tmp_path):
    """STATUS/INIT/POSDATA/GETFORCE/EXIT in i-PI's order; Bohr/Hartree units; h transposed; BEC layout."""
    model = AnisotropicBorn(charges=CHARGES)
    atoms = nacl()
    h, q = to_ipi(atoms)
    assert not np.allclose(h, h.T)
    got = {}

    def script(conn):
        assert status(conn) == "NEEDINIT"
        init(conn, "mtsim")
        assert status(conn) == "READY"
        posdata(conn, h, q)
        assert status(conn) == "HAVEDATA"
        got["result"] = getforce(conn, len(atoms))
        assert status(conn) == "READY"
        conn.sendall(header("EXIT"))

    with FakeServer(tmp_path, script) as server:
        assert driver(model, atoms, server).serve() == 1
    energy, forces, virial, extras = got["result"]
    p = model.predict(atoms)
    np.testing.assert_allclose(energy, p.energy / HARTREE, rtol=1e-12)
    np.testing.assert_allclose(forces, p.forces * BOHR / HARTREE, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(virial, -p.stress * atoms.get_volume() / HARTREE, rtol=1e-10, atol=1e-14)
    # the cell is h.T: a structure with h itself as rows is a different crystal
    wrong = atoms.copy()
    wrong.cell = h * BOHR
    assert abs(model.predict(wrong).energy - p.energy) > 1e-3
    bec = np.array(extras["BEC"])
    assert bec.shape == (3 * len(atoms), 3)
    for i in range(len(atoms)):
        for a in range(3):
            for b in range(3):
                assert bec[3 * i + b, a] == pytest.approx(p.born_charges[i, a, b], abs=1e-14)
    E = np.array([0.01, -0.02, 0.03])  # i-PI's field force Z @ E is mtsim's Z_i^T E
    np.testing.assert_allclose((bec @ E).reshape(-1, 3), field_forces(p.born_charges, E), atol=1e-14)
    np.testing.assert_allclose(extras["dielectric"], p.dielectric)
    np.testing.assert_allclose(extras["charges"], p.charges)
    np.testing.assert_allclose(extras["magmoms"], p.magmoms)


def test_against_ase_socket_server(tmp_path):
    """ASE's own i-PI protocol implementation (server side, its own unit conversions) agrees."""
    from ase.calculators.socketio import IPIProtocol

    model = PairModel(charges=CHARGES)
    frames = [nacl(), nacl(rattle=0.1)]
    got = []

    def script(conn):
        protocol = IPIProtocol(conn, txt=None)
        for atoms in frames:
            got.append(protocol.calculate(atoms.positions, np.asarray(atoms.cell)))
        protocol.end()

    with FakeServer(tmp_path, script, inet=True) as server:
        assert driver(model, frames[0], server).serve() == 2
    for atoms, r in zip(frames, got):
        p = model.predict(atoms)
        assert r["energy"] == pytest.approx(p.energy, rel=1e-12)
        np.testing.assert_allclose(r["forces"], p.forces, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r["virial"], -p.stress * atoms.get_volume(), rtol=1e-10, atol=1e-12)
        assert set(json.loads(bytes(r["morebytes"]).decode())) == {"BEC", "dielectric", "magmoms", "charges"}


def test_batched_protocol(tmp_path):
    """batch_size:N in the INIT string switches to i-PI's batched POSDATA/GETFORCE."""
    model = PairModel(charges=CHARGES)
    frames = [nacl(), nacl(rattle=0.1), nacl(rattle=0.02)]
    n = len(frames[0])
    got = {}

    def script(conn):
        assert status(conn) == "NEEDINIT"
        init(conn, "x:1, batch_size:3")
        assert status(conn) == "READY"
        cells = b"".join(to_ipi(a)[0].tobytes() + np.linalg.inv(to_ipi(a)[0]).tobytes() for a in frames)
        positions = np.stack([a.positions / BOHR for a in frames]).tobytes()
        conn.sendall(header("POSDATA") + np.int32(n).tobytes() + cells + positions + header("GETFORCE"))
        assert recv_exact(conn, 12) == header("FORCEREADY")
        got["energies"] = np.frombuffer(recv_exact(conn, 24), np.float64)
        assert np.frombuffer(recv_exact(conn, 4), np.int32)[0] == n
        got["forces"] = np.frombuffer(recv_exact(conn, 3 * 24 * n), np.float64).reshape(3, n, 3)
        got["virials"] = np.frombuffer(recv_exact(conn, 3 * 72), np.float64).reshape(3, 3, 3)
        got["extras"] = []
        for _ in frames:
            length = np.frombuffer(recv_exact(conn, 4), np.int32)[0]
            got["extras"].append(json.loads(recv_exact(conn, length)))
        conn.sendall(header("EXIT"))

    with FakeServer(tmp_path, script) as server:
        assert driver(model, frames[0], server).serve() == 3
    for k, atoms in enumerate(frames):
        p = model.predict(atoms)
        assert got["energies"][k] == pytest.approx(p.energy / HARTREE, rel=1e-12)
        np.testing.assert_allclose(got["forces"][k], p.forces * BOHR / HARTREE, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got["virials"][k], -p.stress * atoms.get_volume() / HARTREE, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got["extras"][k]["charges"], p.charges)


def test_molecule_gets_zero_virial(tmp_path):
    """Non-periodic template: the cell i-PI sends is ignored for neighbours, the virial is zero (as ASE does)."""
    from ase.build import molecule

    atoms = molecule("H2O")
    model = PairModel()
    got = {}

    def script(conn):
        init(conn)
        posdata(conn, np.eye(3) * 40, atoms.positions / BOHR)
        got["result"] = getforce(conn, 3)
        conn.sendall(header("EXIT"))

    with FakeServer(tmp_path, script) as server:
        driver(model, atoms, server).serve()
    energy, forces, virial, _ = got["result"]
    p = model.predict(atoms)
    assert energy == pytest.approx(p.energy / HARTREE, rel=1e-12)
    np.testing.assert_allclose(forces, p.forces * BOHR / HARTREE, atol=1e-14)
    assert not virial.any()


# ================================================================================================ errors, no hangs
def malformed(tmp_path, send, match, **options):
    """The driver must raise ProtocolError matching ``match`` quickly, not hang (the fake server waits 60 s)."""
    atoms = nacl()

    def script(conn):
        send(conn, atoms)
        wait_closed(conn)

    start = time.monotonic()
    with FakeServer(tmp_path, script) as server:
        with pytest.raises(ProtocolError, match=match):
            driver(PairModel(), atoms, server, **options).serve()
    assert time.monotonic() - start < 10


def test_unknown_header(tmp_path):
    malformed(tmp_path, lambda conn, atoms: conn.sendall(b"HELLO WORLD!"), "unknown message header")


def test_getforce_before_posdata(tmp_path):
    def send(conn, atoms):
        init(conn)
        conn.sendall(header("GETFORCE"))

    malformed(tmp_path, send, "out-of-order.*GETFORCE")


def test_posdata_before_init(tmp_path):
    malformed(tmp_path, lambda conn, atoms: posdata(conn, *to_ipi(atoms)), "out-of-order.*POSDATA before INIT")


def test_posdata_twice(tmp_path):
    def send(conn, atoms):
        init(conn)
        posdata(conn, *to_ipi(atoms))
        posdata(conn, *to_ipi(atoms))

    malformed(tmp_path, send, "out-of-order.*not fetched")


def test_truncated_message_times_out(tmp_path):
    def send(conn, atoms):
        init(conn)
        conn.sendall(header("POSDATA") + np.zeros(5).tobytes())

    malformed(tmp_path, send, r"truncated message: POSDATA \(cell\) stopped after 40 of 144 bytes", timeout=0.5)


def test_truncated_header_times_out(tmp_path):
    malformed(tmp_path, lambda conn, atoms: conn.sendall(b"STAT"), "truncated message: a message header", timeout=0.5)


def test_wrong_atom_count(tmp_path):
    def send(conn, atoms):
        init(conn)
        h, q = to_ipi(atoms)
        posdata(conn, h, q[:-2])

    malformed(tmp_path, send, "i-PI sent 14 atoms, but the structure file has 16")


def test_nan_positions(tmp_path):
    def send(conn, atoms):
        init(conn)
        h, q = to_ipi(atoms)
        q[3, 1] = np.nan
        posdata(conn, h, q)

    malformed(tmp_path, send, "NaN or inf")


def test_bad_init(tmp_path):
    def send(conn, atoms):
        conn.sendall(header("INIT") + np.int32(0).tobytes() + np.int32(-5).tobytes())

    malformed(tmp_path, send, "malformed INIT")
    malformed(tmp_path, lambda conn, atoms: init(conn, "batch_size:two"), "bad batch_size")


def test_idle_timeout(tmp_path):
    malformed(
        tmp_path, lambda conn, atoms: init(conn), "no message from the server within idle_timeout", idle_timeout=0.5
    )


def test_idle_timeout_by_default_and_elements_checked_before_connecting(tmp_path, cli):
    """The driver no longer waits forever by default (600 s; 0 = forever); a server that stops answering ends it
    with a message saying so; an element the model lacks stops it before any connection is tried."""
    from click.testing import CliRunner

    assert Driver(PairModel(), nacl()).idle_timeout == ipi.DEFAULT_IDLE_TIMEOUT == 600.0
    assert Driver(PairModel(), nacl(), idle_timeout=0).idle_timeout is None
    malformed(tmp_path, lambda conn, atoms: init(conn), "it has stopped or hangs", idle_timeout=0.5)
    sodium_only = PairModel()
    sodium_only.elements = (11,)
    start = time.monotonic()
    with pytest.raises(ValueError, match="does not support element.*Cl"):
        Driver(sodium_only, nacl(), unix=str(tmp_path / "nothing"), connect_timeout=30).serve()
    assert time.monotonic() - start < 3  # no connection attempt
    ase.io.write(tmp_path / "init.extxyz", nacl())
    result = CliRunner().invoke(cli, ["ipi", str(tmp_path / "init.extxyz"), "--idle-timeout", "-1"])
    assert result.exit_code == 2 and "--idle-timeout" in result.output


def test_model_error_is_reported(tmp_path):
    atoms = nacl()

    def script(conn):
        init(conn)
        h, q = to_ipi(atoms)
        q[1] = q[0] + 0.01  # overlapping atoms
        posdata(conn, h, q)
        wait_closed(conn)

    with FakeServer(tmp_path, script) as server:
        with pytest.raises(IPIError, match="the model failed on the structure i-PI sent"):
            driver(PairModel(), atoms, server).serve()


def test_connection_lost_and_reconnect(tmp_path):
    atoms = nacl()
    energies = []

    def first(conn):  # one step, then the server goes away without EXIT
        init(conn)
        posdata(conn, *to_ipi(atoms))
        energies.append(getforce(conn, len(atoms))[0])

    def second(conn):  # a fresh connection must start from NEEDINIT again
        assert status(conn) == "NEEDINIT"
        init(conn)
        posdata(conn, *to_ipi(atoms))
        energies.append(getforce(conn, len(atoms))[0])
        conn.sendall(header("EXIT"))

    with FakeServer(tmp_path, first) as server:
        with pytest.raises(ConnectionLost, match="closed the connection without EXIT after 1 evaluations"):
            driver(PairModel(), atoms, server).serve()
    lines = []
    with FakeServer(tmp_path, first, second) as server:
        d = driver(PairModel(), atoms, server, reconnect=True, log=lines.append)
        assert d.serve() == 2
    assert d.connections == 2 and energies[0] == energies[1] == energies[2]
    assert any("reconnecting" in line for line in lines)


def test_no_server(tmp_path):
    start = time.monotonic()
    with pytest.raises(ConnectionLost, match="could not connect to i-PI"):
        Driver(PairModel(), nacl(), unix=str(tmp_path / "nothing"), connect_timeout=0.5).serve()
    assert time.monotonic() - start < 3


# ================================================================================================ CLI
@pytest.fixture
def cli(monkeypatch):
    from mtsim.cli import ipi as cli_ipi
    from mtsim.cli import main

    monkeypatch.setattr(cli_ipi, "load_model", lambda path, device, precision=None: PairModel(charges=CHARGES))
    return main


def test_cli_serves_until_exit(tmp_path, cli):
    from click.testing import CliRunner

    atoms = nacl()
    ase.io.write(tmp_path / "init.extxyz", atoms)
    got = {}

    def script(conn):
        init(conn)
        posdata(conn, *to_ipi(atoms))
        got["energy"] = getforce(conn, len(atoms))[0]
        conn.sendall(header("EXIT"))

    with FakeServer(tmp_path, script, inet=True) as server:
        result = CliRunner().invoke(
            cli,
            [
                "ipi",
                str(tmp_path / "init.extxyz"),
                "--address",
                server.address,
                "--timeout",
                "5",
                "--connect-timeout",
                "5",
            ],
        )
    assert result.exit_code == 0, result.output
    assert "EXIT received after 1 evaluations" in result.output
    assert got["energy"] == pytest.approx(PairModel().predict(atoms).energy / HARTREE, rel=1e-12)


def test_cli_errors(tmp_path, cli):
    from click.testing import CliRunner

    atoms = nacl()
    ase.io.write(tmp_path / "small.extxyz", atoms[:4])

    def script(conn):
        init(conn)
        posdata(conn, *to_ipi(atoms))
        wait_closed(conn)

    with FakeServer(tmp_path, script) as server:
        result = CliRunner().invoke(
            cli,
            ["ipi", str(tmp_path / "small.extxyz"), "--unix", server.path, "--timeout", "5", "--connect-timeout", "5"],
        )
    assert result.exit_code == 1
    assert "i-PI sent 16 atoms, but the structure file has 4" in result.output
    result = CliRunner().invoke(cli, ["ipi", str(tmp_path / "small.extxyz"), "--unix", "a", "--address", "b:1"])
    assert result.exit_code == 2 and "not both" in result.output


# ================================================================================================ the real i-PI
IPI = shutil.which("i-pi")
needs_ipi = pytest.mark.skipif(
    importlib.util.find_spec("ipi") is None or IPI is None, reason="i-PI is not installed (pip install ipi)"
)

INPUT = """<simulation verbosity="low" safe_stride="1" floatformat="%.16e" sockets_prefix="{prefix}">
  <output prefix="run">
    <properties filename="out" stride="1" flush="1">[{properties}]</properties>
    {trajectories}
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>12345</seed></prng>
  <ffsocket name="mtsim" mode="{mode}">
    <address>{address}</address>{port}
    <latency>1e-3</latency>{batch}
  </ffsocket>
  <system>
    <initialize nbeads="{nbeads}">
      <file mode="ase" units="angstrom">init.extxyz</file>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="mtsim"/></forces>
    {motion}
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
  </system>
</simulation>
"""


def trajectory(name, what):
    return f'<trajectory filename="{name}" stride="1" format="ase" flush="1">{what}</trajectory>'


def run_ipi(tmp_path, model, atoms, *, motion, properties, trajectories, steps=4, nbeads=1, inet=False, batch=1):
    """Run i-PI (subprocess) with mtsim.ipi.Driver (thread) as its force field; return the i-PI log."""
    ase.io.write(tmp_path / "init.extxyz", atoms)
    if inet:
        with socket.socket() as probe:  # a free loopback port
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        where = {"address": f"127.0.0.1:{port}"}
        mode, address, port_xml = "inet", "127.0.0.1", f"\n    <port>{port}</port>"
    else:
        where = {"unix": str(tmp_path / "ipi_mtsim")}
        mode, address, port_xml = "unix", "mtsim", ""
    (tmp_path / "input.xml").write_text(
        INPUT.format(
            prefix=f"{tmp_path}/ipi_",
            properties=", ".join(properties),
            trajectories="\n    ".join(trajectories),
            steps=steps,
            mode=mode,
            address=address,
            port=port_xml,
            nbeads=nbeads,
            motion=motion,
            batch=f"\n    <batch_size>{batch}</batch_size>" if batch > 1 else "",
        )
    )
    log_path = tmp_path / "ipi.log"
    outcome = {}

    def serve():
        try:
            outcome["count"] = Driver(model, atoms, **where, timeout=30, connect_timeout=60).serve()
        except BaseException as err:
            outcome["error"] = err

    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [IPI, "input.xml"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline and "error" not in outcome:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        thread.join(timeout=10)
        Path(f"{tmp_path}/ipi_mtsim").unlink(missing_ok=True)
    text = log_path.read_text()
    assert "error" not in outcome, f"driver failed: {outcome.get('error')!r}\n{text[-3000:]}"
    assert proc.returncode == 0, text[-3000:]
    assert outcome.get("count", 0) > 0, text[-3000:]
    return text


def per_atom(path, key):
    """One per-atom array of every frame of an i-PI extxyz trajectory (ASE moves forces into a calculator)."""
    values = []
    for image in ase.io.read(path, ":"):
        if key in image.arrays:
            values.append(image.arrays[key])
        elif key == "velocities":
            values.append(image.get_velocities())
        else:
            values.append(image.calc.results[key])
    return values


def frames(path, numbers):
    images = ase.io.read(path, ":")
    for image in images:
        image.numbers = numbers
    return images


NVE = """<motion mode="dynamics"><fixcom>False</fixcom>
      <dynamics mode="nve"><timestep units="femtosecond">1.0</timestep></dynamics>
    </motion>"""


@needs_ipi
def test_ipi_nve_matches_direct_predictions(tmp_path):
    """Energies, forces and virial that i-PI records equal direct predictions for the frames it records."""
    model = PairModel(charges=CHARGES)
    atoms = nacl()
    run_ipi(
        tmp_path,
        model,
        atoms,
        motion=NVE,
        steps=5,
        properties=["step", "potential{ase}", "conserved{ase}", "virial_md"],
        trajectories=[trajectory("pos", "positions"), trajectory("frc", "forces")],
    )
    out = np.loadtxt(tmp_path / "run.out", ndmin=2)
    positions = frames(tmp_path / "run.pos_0.extxyz", atoms.numbers)
    forces = per_atom(tmp_path / "run.frc_0.extxyz", "forces")
    assert len(out) == len(positions) == len(forces) == 6
    moved = np.abs(positions[-1].positions - positions[0].positions).max()
    assert moved > 1e-3  # the atoms moved
    for row, frame, f in zip(out, positions, forces):
        p = model.predict(frame)
        # positions and forces come back rounded to 1e-8 (extxyz): tolerances well above that, far below any
        # unit (Bohr/Hartree) or transpose mistake
        assert row[1] == pytest.approx(p.energy, abs=2e-6)
        np.testing.assert_allclose(f, p.forces, atol=2e-6)
        virial = row[3:9] * HARTREE / BOHR**3  # i-PI: [xx yy zz xy xz yz] of vir / V, atomic units
        stress = p.stress
        np.testing.assert_allclose(virial, -stress[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]], atol=1e-7)
    assert abs(out[-1, 2] - out[0, 2]) < 1e-3  # NVE conserves energy


@needs_ipi
def test_ipi_batched_path_integral_over_tcp(tmp_path):
    """i-PI's batched requests (nbeads=2, <batch_size>2</batch_size>) over TCP loopback."""
    model = PairModel(charges=CHARGES)
    atoms = nacl((1, 1, 2))
    motion = NVE.replace('"nve"', '"nvt"').replace(
        "</dynamics>", '<thermostat mode="pile_l"><tau units="femtosecond">100</tau></thermostat></dynamics>'
    )
    run_ipi(
        tmp_path,
        model,
        atoms,
        motion=motion,
        steps=2,
        nbeads=2,
        inet=True,
        batch=2,
        properties=["step", "bead_potentials{ase}"],
        trajectories=[trajectory("pos", "positions"), trajectory("frc", "forces")],
    )
    out = np.loadtxt(tmp_path / "run.out", ndmin=2)
    for bead in range(2):
        positions = frames(tmp_path / f"run.pos_{bead}.extxyz", atoms.numbers)
        forces = per_atom(tmp_path / f"run.frc_{bead}.extxyz", "forces")
        assert len(positions) == len(out) == 3
        for row, frame, f in zip(out, positions, forces):
            p = model.predict(frame)
            assert row[1 + bead] == pytest.approx(p.energy, abs=2e-6)
            np.testing.assert_allclose(f, p.forces, atol=2e-6)


EDA = """<motion mode="driven_dynamics"><fixcom>False</fixcom>
      <driven_dynamics mode="eda-nve">
        <timestep units="femtosecond">{dt}</timestep>
        <efield><amp units="v/ang">[{ex}, {ey}, {ez}]</amp><freq units="inversecm">0</freq></efield>
        <bec mode="driver"/>
      </driven_dynamics>
    </motion>"""


@needs_ipi
def test_ipi_eda_nve_uses_mtsim_born_charges(tmp_path):
    """eda-nve with a constant field: i-PI's field force on each atom is Z*^T E from mtsim's Born charges
    (non-symmetric and position dependent here), and it enters the equations of motion."""
    model = AnisotropicBorn(charges=CHARGES)
    atoms = nacl()
    field = np.array([0.05, -0.02, 0.1])  # V/Å
    dt = 1.0
    run_ipi(
        tmp_path,
        model,
        atoms,
        motion=EDA.format(dt=dt, ex=field[0], ey=field[1], ez=field[2]),
        steps=3,
        properties=["step", "potential{ase}", "Efield{v/ang}"],
        trajectories=[
            trajectory("pos", "positions"),
            trajectory("vel", "velocities"),
            trajectory("frc", "forces"),
            trajectory("efrc", "Eforces"),
            trajectory("becx", "becx"),
            trajectory("becz", "becz"),
        ],
    )
    out = np.loadtxt(tmp_path / "run.out", ndmin=2)
    np.testing.assert_allclose(out[:, 2:5], np.tile(field, (len(out), 1)), rtol=1e-7)
    positions = frames(tmp_path / "run.pos_0.extxyz", atoms.numbers)
    velocities = per_atom(tmp_path / "run.vel_0.extxyz", "velocities")
    forces = per_atom(tmp_path / "run.frc_0.extxyz", "forces")
    eforces = per_atom(tmp_path / "run.efrc_0.extxyz", "Eforces")
    becx = per_atom(tmp_path / "run.becx_0.extxyz", "becx")
    becz = per_atom(tmp_path / "run.becz_0.extxyz", "becz")
    assert len(positions) == len(eforces) == 4
    predictions = [model.predict(frame) for frame in positions]
    for p, f, fe, zx, zz in zip(predictions, forces, eforces, becx, becz):
        np.testing.assert_allclose(f, p.forces, atol=2e-6)
        np.testing.assert_allclose(fe, field_forces(p.born_charges, field), atol=1e-7)
        np.testing.assert_allclose(zx, p.born_charges[:, 0, :], atol=1e-7)  # becx[i, b] = dF_ib/dE_x
        np.testing.assert_allclose(zz, p.born_charges[:, 2, :], atol=1e-7)
    assert not np.allclose(predictions[0].born_charges, predictions[-1].born_charges, atol=1e-4)
    # first velocity-Verlet step with the total force F + Z^T E (ASE units: Å, amu, Å sqrt(amu/eV))
    step = dt * FS
    masses = atoms.get_masses()[:, None]
    accel = 2 * (positions[1].positions - positions[0].positions - step * velocities[0]) / step**2 * masses
    total = predictions[0].forces + field_forces(predictions[0].born_charges, field)
    np.testing.assert_allclose(accel, total, atol=2e-3)
    assert np.abs(accel - predictions[0].forces).max() > 0.05  # the field force is really there
