"""mtsim as an i-PI driver: a client of i-PI's socket protocol that also serves Born charges.

The server (i-PI, or ASE's ``SocketIOCalculator``) sends positions and cell over a socket; the driver answers with
energy, forces and virial, plus an "extras" string. mtsim answers with every output of the model:

- energy (Hartree), forces (Hartree/bohr), virial (Hartree) = -stress * volume with ``stress`` in ASE's sign
  (i-PI's pressure is tr(virial + kinetic)/3V), sent transposed like i-PI's own ASE driver does (zero if no
  direction is periodic);
- extras, a JSON object: ``"BEC"`` — the Born charges in the layout i-PI's driven dynamics (``eda-nve``,
  ``eda-nvt``, ``<bec mode="driver"/>``) reads: a [3n, 3] list with ``BEC[3*i + b][a] = Z[i, a, b] = dF_ib/dE_a``
  (units of e), so that i-PI's field force ``Z @ E`` equals mtsim's ``F_i = Z_i^T E``; ``"dielectric"`` [3, 3];
  ``"magmoms"`` [n] (μB); ``"charges"`` [n] (e).

i-PI sends no element information: the atomic numbers (and which directions are periodic) come from a template
structure, which must list the atoms in the same order as i-PI's input. i-PI's cell ``h`` has the lattice vectors
as columns; it arrives row-major, so ``cell (Å, rows = lattice vectors) = h.T * BOHR``. The inverse cell it also
sends is read and ignored (ASE's server sends it in another layout). i-PI rotates periodic cells so that a lies
along x and b in the xy plane; forces, Born charges and the field of ``<efield>`` are all in that frame.

Protocol (all headers 12 bytes, upper case, space padded; numbers in native byte order):

=========== ================================================================ ==========================
server      payload that follows                                             driver answers
=========== ================================================================ ==========================
STATUS      —                                                                NEEDINIT / READY / HAVEDATA
INIT        int32 bead index, int32 length, string (may hold batch_size:N)  —
POSDATA     float64 h[3,3], float64 h^-1[3,3], int32 n, float64 pos[n,3]     —
GETFORCE    —                                                                FORCEREADY, float64 energy,
                                                                             int32 n, float64 forces[n,3],
                                                                             float64 virial[3,3], int32
                                                                             length, extras string
EXIT        —                                                                (the driver stops)
=========== ================================================================ ==========================

When the INIT string holds ``batch_size:N`` (i-PI's ``<ffsocket><batch_size>``), POSDATA and GETFORCE carry N
structures (``int32 n, N x (h, h^-1), positions [N, 3n]``; ``N energies, int32 n, forces [N, 3n], virials [N, 3, 3],
N x (int32 length, extras)``) and the model evaluates them as one batch. i-PI's ``mode="shm"`` transport is not
supported (use ``unix`` or ``inet``).

Errors: a message that is not one of the above, arrives out of order (GETFORCE without new positions, POSDATA
before INIT or before the previous forces were fetched), has the wrong atom count, or stops arriving within
``timeout`` seconds raises ``ProtocolError``; a server that closes the connection without EXIT raises
``ConnectionLost`` (or, with ``reconnect=True``, the driver connects again); a server that sends nothing for
``idle_timeout`` seconds (default ``DEFAULT_IDLE_TIMEOUT``) raises ``ServerStopped``. EXIT ends ``Driver.serve``
normally.

>>> import mtsim, mtsim.ipi                                                       # doctest: +SKIP
>>> mtsim.ipi.serve(mtsim.load("model.onnx"), "init.xyz", unix="mtsim")         # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mtsim.structure import Structure, as_structure
from mtsim.units import BOHR, HARTREE

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_IDLE_TIMEOUT",
    "HEADER_LENGTH",
    "UNIX_PREFIX",
    "ConnectionLost",
    "Driver",
    "IPIError",
    "IPIPotential",
    "ProtocolError",
    "Result",
    "ServerStopped",
    "extras",
    "parse_address",
    "serve",
    "unix_path",
]

HEADER_LENGTH = 12
"""Every message header is 12 bytes: the upper-case name padded with spaces."""
DEFAULT_ADDRESS = "localhost:65535"
"""i-PI's defaults for ``<ffsocket mode="inet">`` (address localhost, port 65535)."""
UNIX_PREFIX = "/tmp/ipi_"
"""i-PI's default ``sockets_prefix``: a UNIX socket named NAME lives at /tmp/ipi_NAME."""
MAX_INIT_LENGTH = 1 << 20
MAX_BATCH = 1 << 16
FORCE_TO_AU = BOHR / HARTREE
"""eV/Å -> Hartree/bohr."""
DEFAULT_IDLE_TIMEOUT = 600.0
"""s. The longest wait for i-PI's next message by default: a server that stops answering (i-PI 3.3.1 does, after a
driver was killed) ends the driver instead of leaving it waiting forever."""

SERVER_MESSAGES = ("STATUS", "INIT", "POSDATA", "GETFORCE", "EXIT")


def _header(name: str) -> bytes:
    return name.upper().ljust(HEADER_LENGTH).encode("ascii")


class IPIError(RuntimeError):
    """Base class of the i-PI driver's errors."""


class ProtocolError(IPIError):
    """A malformed, out-of-order or truncated message, or one that does not fit the structure."""


class ConnectionLost(IPIError):
    """The server closed the connection (or could not be reached) without sending EXIT."""


class ServerStopped(ProtocolError):
    """The server sent nothing for ``idle_timeout`` seconds."""


# ================================================================================================ physics
@dataclass
class Result:
    """One structure's answer in i-PI's units: ``energy`` (Hartree), ``forces`` [n,3] (Hartree/bohr), ``virial``
    [3,3] (Hartree, -stress * volume), ``extras`` (the JSON string)."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    extras: str


def extras(prediction) -> dict:
    """The extras dict of one prediction: ``BEC`` ([3n,3], i-PI's layout, e), ``dielectric``, ``magmoms``,
    ``charges``. ``BEC[3*i + b][a] = born_charges[i, a, b]``: i-PI's field force ``BEC @ E`` is mtsim's
    ``F_i,b = sum_a Z[i,a,b] E_a``."""
    born = np.asarray(prediction.born_charges, dtype=np.float64)
    n = born.shape[0]
    return {
        "BEC": born.transpose(0, 2, 1).reshape(3 * n, 3).tolist(),
        "dielectric": np.asarray(prediction.dielectric, dtype=np.float64).tolist(),
        "magmoms": np.asarray(prediction.magmoms, dtype=np.float64).reshape(n).tolist(),
        "charges": np.asarray(prediction.charges, dtype=np.float64).reshape(n).tolist(),
    }


class IPIPotential:
    """A model with a template structure, evaluated on what i-PI sends.

    ``model``: anything with ``predict(structure or list) -> Prediction(s)`` (``mtsim.Model``); ``structure``: an
    ``ase.Atoms``, ``mtsim.Structure`` or a file ASE can read (last frame) giving the atomic numbers, their order and
    ``pbc``. Call it with cells ``h`` (bohr, lattice vectors as columns, as i-PI sends them) and positions (bohr).
    """

    def __init__(self, model, structure):
        if isinstance(structure, (str, os.PathLike)):
            import ase.io

            structure = ase.io.read(structure)
        template = as_structure(structure)
        supported = getattr(model, "elements", None)
        if supported is not None:
            missing = sorted(set(template.numbers.tolist()) - {int(z) for z in supported})
            if missing:
                from ase.data import chemical_symbols

                raise ValueError(
                    f"the model does not support element(s) "
                    f"{', '.join(chemical_symbols[z] for z in missing)} of the structure"
                )
        self.model = model
        self.numbers = template.numbers
        self.pbc = template.pbc
        self.periodic = bool(self.pbc.any())
        self.calls = 0

    def __len__(self) -> int:
        return self.numbers.size

    def structure(self, h, positions) -> Structure:
        """The structure i-PI means: ``h`` [3,3] bohr (columns = lattice vectors), positions [n,3] or [3n] bohr."""
        cell = np.asarray(h, dtype=np.float64).reshape(3, 3).T * BOHR
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3) * BOHR
        if len(pos) != len(self):
            raise ProtocolError(
                f"i-PI sent {len(pos)} atoms, but the structure file has {len(self)}; start i-PI "
                "and the driver from the same structure (same atoms, same order)"
            )
        return Structure(self.numbers, pos, cell, self.pbc)

    def __call__(self, cells: Sequence, positions: Sequence) -> list[Result]:
        structures = [self.structure(h, q) for h, q in zip(cells, positions)]
        predictions = self.model.predict(structures)
        if not isinstance(predictions, (list, tuple)):
            predictions = [predictions]
        self.calls += len(structures)
        return [self.result(s, p) for s, p in zip(structures, predictions)]

    def result(self, structure: Structure, prediction) -> Result:
        """Unit conversion of one prediction (eV, eV/Å, eV/Å^3) to i-PI's (Hartree, Hartree/bohr, Hartree)."""
        volume = abs(float(np.linalg.det(structure.cell)))
        if self.periodic and volume > 0:
            virial = -np.asarray(prediction.stress, dtype=np.float64) * volume / HARTREE
        else:
            virial = np.zeros((3, 3))
        return Result(
            energy=float(prediction.energy) / HARTREE,
            forces=np.asarray(prediction.forces, dtype=np.float64).reshape(-1, 3) * FORCE_TO_AU,
            virial=virial,
            extras=json.dumps(extras(prediction)),
        )


# ================================================================================================ addresses
def parse_address(address: str | tuple) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6), ``":PORT"``/``"PORT"`` (localhost) or ``(host, port)``."""
    if isinstance(address, tuple):
        host, port = address
    else:
        text = str(address).strip()
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = "", text
        host = host.strip("[]") or "localhost"
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"bad i-PI address {address!r}: expected HOST:PORT with an integer port") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad i-PI address {address!r}: port must be 1..65535")
    return str(host), port


def unix_path(name: str | os.PathLike, prefix: str = UNIX_PREFIX) -> str:
    """The socket file of i-PI's ``<ffsocket mode="unix"><address>NAME</address>``: ``prefix + NAME``; a NAME
    holding a ``/`` is taken as the full path."""
    name = os.fspath(name)
    return name if "/" in name else prefix + name


# ================================================================================================ the driver
class Driver:
    """An i-PI client serving ``model`` for the atoms of ``structure``.

    Connect with ``address`` (``"HOST:PORT"``, default ``localhost:65535``) or ``unix`` (a name, see
    ``unix_path``, or a path). Options:

    - ``timeout`` (s): once a message has started, its rest must arrive (and our answers must be sent) within this
      time, else ``ProtocolError``;
    - ``idle_timeout`` (s; 0 or None = forever; default ``DEFAULT_IDLE_TIMEOUT``): the longest wait for the next
      message, after which the driver stops with an ``IPIError`` saying that the server stopped answering;
    - ``connect_timeout`` (s): how long to keep trying to connect (i-PI opens its socket only after it started);
    - ``reconnect``: when the server closes the connection without EXIT, connect again (for up to
      ``connect_timeout``) and carry on instead of raising ``ConnectionLost``;
    - ``log``: a callable taking one line, or None for silence.

    ``serve()`` returns the number of structures evaluated when the server sends EXIT. The structure's elements are
    checked against the model's (``ValueError``) before connecting.
    """

    def __init__(
        self,
        model,
        structure,
        address: str | tuple | None = None,
        unix: str | None = None,
        *,
        timeout: float = 60.0,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        connect_timeout: float = 60.0,
        reconnect: bool = False,
        log: Callable[[str], None] | None = None,
    ):
        if address is not None and unix is not None:
            raise ValueError("give either address (HOST:PORT) or unix (a socket name), not both")
        self.potential = model if isinstance(model, IPIPotential) else IPIPotential(model, structure)
        self.unix = None if unix is None else unix_path(unix)
        self.address = None if self.unix else parse_address(address or DEFAULT_ADDRESS)
        if timeout is None or not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        if idle_timeout is not None and not idle_timeout >= 0:
            raise ValueError(f"idle_timeout must be >= 0 s (0: wait forever), got {idle_timeout}")
        self.idle_timeout = float(idle_timeout) if idle_timeout else None
        self.connect_timeout = float(connect_timeout)
        self.reconnect = bool(reconnect)
        self.log = log or (lambda line: None)
        self.connections = 0

    @property
    def where(self) -> str:
        return f"unix socket {self.unix}" if self.unix else f"{self.address[0]}:{self.address[1]}"

    @property
    def evaluations(self) -> int:
        return self.potential.calls

    # -------------------------------------------------------------------------------------- connecting
    def connect(self) -> socket.socket:
        """A connected socket, retrying every 0.1-1 s for up to ``connect_timeout`` seconds."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.1
        while True:
            try:
                if self.unix:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    target = self.unix
                else:
                    infos = socket.getaddrinfo(*self.address, type=socket.SOCK_STREAM)
                    family, kind, proto, _, target = infos[0]
                    sock = socket.socket(family, kind, proto)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(max(0.1, min(self.timeout, deadline - time.monotonic())))
                try:
                    sock.connect(target)
                except BaseException:
                    sock.close()
                    raise
                self.connections += 1
                return sock
            except OSError as err:  # refused, no such socket file, timeout, unknown host
                if time.monotonic() + delay > deadline:
                    raise ConnectionLost(
                        f"could not connect to i-PI at {self.where} within "
                        f"{self.connect_timeout:g} s ({err}); is i-PI running with a matching "
                        "<ffsocket> (mode, address, port)?"
                    ) from None
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    def serve(self) -> int:
        """Connect and answer i-PI until EXIT; returns the number of structures evaluated."""
        while True:
            sock = self.connect()
            self.log(f"mtsim i-PI driver: connected to {self.where} ({len(self.potential)} atoms)")
            try:
                exited = self.handle(sock)
            except ConnectionLost as err:
                if not self.reconnect:
                    raise
                self.log(f"mtsim i-PI driver: {err}; reconnecting")
                continue
            finally:
                _close(sock)
            if exited:
                self.log(f"mtsim i-PI driver: EXIT received after {self.evaluations} evaluations")
                return self.evaluations
            if not self.reconnect:
                raise ConnectionLost(
                    f"i-PI at {self.where} closed the connection without EXIT after {self.evaluations} evaluations"
                )
            self.log("mtsim i-PI driver: connection closed without EXIT; reconnecting")

    # -------------------------------------------------------------------------------------- one connection
    def handle(self, sock: socket.socket) -> bool:
        """Answer the server on one connected socket. True on EXIT, False if the server closed the connection
        between messages; raises ``ProtocolError`` / ``ConnectionLost`` otherwise. The socket stays open."""
        stream = _Stream(sock, self.timeout, self.idle_timeout)
        initialised = False
        batch = 1
        results: list[Result] | None = None
        while True:
            name = stream.header()
            if name is None:
                return False
            if name == "STATUS":
                reply = "HAVEDATA" if results is not None else ("READY" if initialised else "NEEDINIT")
                stream.send(_header(reply), "the STATUS reply")
            elif name == "INIT":
                _, length = stream.array(np.int32, 2, "INIT")
                if not 0 <= length <= MAX_INIT_LENGTH:
                    raise ProtocolError(f"malformed INIT: string length {length}")
                text = stream.exact(int(length), "the INIT string").decode("utf-8", errors="replace")
                batch = _batch_size(text)
                initialised = True
            elif name == "POSDATA":
                if not initialised:
                    raise ProtocolError("out-of-order message: POSDATA before INIT (the driver answered NEEDINIT)")
                if results is not None:
                    raise ProtocolError(
                        "out-of-order message: POSDATA while the forces of the previous POSDATA "
                        "were not fetched with GETFORCE"
                    )
                cells, positions = self._posdata(stream, batch)
                try:
                    results = self.potential(cells, positions)
                except ProtocolError:
                    raise
                except Exception as err:  # the model rejects the structure: stop with its reason
                    raise IPIError(f"the model failed on the structure i-PI sent: {err}") from err
            elif name == "GETFORCE":
                if results is None:
                    raise ProtocolError(
                        "out-of-order message: GETFORCE without new positions (no POSDATA since the last GETFORCE)"
                    )
                stream.send(_forces_message(results, batch), "the forces")
                results = None
            elif name == "EXIT":
                return True

    def _posdata(self, stream: _Stream, batch: int):
        n_expected = len(self.potential)
        if batch == 1:
            cells = stream.array(np.float64, 18, "POSDATA (cell)")
            n = int(stream.array(np.int32, 1, "POSDATA (atom count)")[0])
            _check_count(n, n_expected)
            positions = stream.array(np.float64, 3 * n, "POSDATA (positions)")
            return [cells[:9].reshape(3, 3)], [positions.reshape(n, 3)]
        n = int(stream.array(np.int32, 1, "batched POSDATA (atom count)")[0])
        _check_count(n, n_expected)
        cells = stream.array(np.float64, 18 * batch, "batched POSDATA (cells)").reshape(batch, 18)
        positions = stream.array(np.float64, 3 * n * batch, "batched POSDATA (positions)").reshape(batch, n, 3)
        return [c[:9].reshape(3, 3) for c in cells], list(positions)


def serve(model, structure, address: str | tuple | None = None, unix: str | None = None, **options) -> int:
    """Serve ``model`` to i-PI until EXIT (see ``Driver`` for the options); returns the number of evaluations."""
    return Driver(model, structure, address=address, unix=unix, **options).serve()


# ================================================================================================ wire helpers
def _check_count(n: int, expected: int) -> None:
    if n != expected:
        raise ProtocolError(
            f"i-PI sent {n} atoms, but the structure file has {expected}; start i-PI and the "
            "driver from the same structure (same atoms, same order)"
        )


def _batch_size(text: str) -> int:
    for token in text.split(","):
        key, sep, value = token.partition(":")
        if sep and key.strip() == "batch_size":
            try:
                size = int(value.strip())
            except ValueError:
                raise ProtocolError(f"malformed INIT string: bad batch_size in {text!r}") from None
            if not 1 <= size <= MAX_BATCH:
                raise ProtocolError(f"malformed INIT string: batch_size {size} out of range")
            return size
    return 1


def _forces_message(results: list[Result], batch: int) -> bytes:
    n = results[0].forces.shape[0]
    parts = [_header("FORCEREADY")]
    if batch == 1:
        r = results[0]
        parts += [
            np.float64(r.energy).tobytes(),
            np.int32(n).tobytes(),
            r.forces.astype(np.float64).tobytes(),
            np.ascontiguousarray(r.virial.T, dtype=np.float64).tobytes(),
        ]
    else:
        parts += [
            np.array([r.energy for r in results], np.float64).tobytes(),
            np.int32(n).tobytes(),
            np.stack([r.forces for r in results]).astype(np.float64).tobytes(),
            np.ascontiguousarray(np.stack([r.virial.T for r in results]), dtype=np.float64).tobytes(),
        ]
    for r in results:
        text = r.extras.encode("utf-8")
        parts += [np.int32(len(text)).tobytes(), text]
    return b"".join(parts)


class _Stream:
    """Exact reads with deadlines on a blocking socket."""

    def __init__(self, sock: socket.socket, timeout: float, idle_timeout: float | None):
        self.sock, self.timeout, self.idle_timeout = sock, timeout, idle_timeout
        self.deadline = time.monotonic() + timeout

    def header(self) -> str | None:
        """The next message name, or None if the server closed the connection before it."""
        self.sock.settimeout(self.idle_timeout)
        try:
            first = self.sock.recv(1)
        except socket.timeout:
            raise ServerStopped(
                f"no message from the server within idle_timeout = {self.idle_timeout:g} s: it has "
                "stopped or hangs (i-PI 3.3.1 stops serving after a driver was killed: restart "
                "i-PI, see the README); idle_timeout 0 waits forever"
            ) from None
        except (ConnectionResetError, ConnectionAbortedError) as err:
            raise ConnectionLost(f"the server reset the connection ({err})") from None
        if not first:
            return None
        self.deadline = time.monotonic() + self.timeout
        raw = first + self.exact(HEADER_LENGTH - 1, "a message header")
        name = raw.rstrip(b" \x00").decode("ascii", errors="replace")
        if name not in SERVER_MESSAGES:
            raise ProtocolError(
                f"malformed or unknown message header {raw!r}; expected one of "
                f"{', '.join(SERVER_MESSAGES)} (is the server speaking the i-PI protocol, without "
                "shared memory?)"
            )
        return name

    def exact(self, size: int, what: str) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(
                    f"truncated message: {what} stopped after {got} of {size} bytes "
                    f"(nothing more within timeout = {self.timeout:g} s)"
                )
            self.sock.settimeout(remaining)
            try:
                part = self.sock.recv_into(view[got:], size - got)
            except socket.timeout:
                continue
            except (ConnectionResetError, ConnectionAbortedError) as err:
                raise ConnectionLost(f"the server reset the connection in the middle of {what} ({err})") from None
            if part == 0:
                raise ConnectionLost(
                    f"the server closed the connection in the middle of {what} ({got} of {size} bytes)"
                )
            got += part
        return bytes(buffer)

    def array(self, dtype, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        values = np.frombuffer(self.exact(dtype.itemsize * count, what), dtype=dtype).copy()
        if dtype.kind == "f" and not np.isfinite(values).all():
            raise ProtocolError(f"malformed {what}: NaN or inf")
        return values

    def send(self, data: bytes, what: str) -> None:
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ProtocolError(f"could not send {what} within timeout = {self.timeout:g} s") from None
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as err:
            raise ConnectionLost(f"the server closed the connection while we sent {what} ({err})") from None


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
