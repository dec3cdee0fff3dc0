"""MD driven by an electric field (paper S5.4): :func:`run` (MD in a field E(t)) and the P–E hysteresis loop
(:func:`hysteresis`, :func:`loop_metrics`, :func:`write_pe_loop`).

Fields are in V/Å (1 MV/cm = ``mtsim.units.MV_PER_CM`` V/Å); times in fs; P in μC/cm². The field physics
(field force, polarization path integral, E(t)) is in :mod:`mtsim.field`.

>>> from mtsim import field, field_md                                           # doctest: +SKIP
>>> E = field.cosine([0, 0, 4 * MV_PER_CM], period=200_000.0)                  # doctest: +SKIP
>>> sim = field_md.run(model, atoms, E, ensemble="nvt-nh", temperature=300, steps=1000, timestep=2)  # doctest: +SKIP
>>> loop = field_md.hysteresis(model, atoms, field_max=0.04, period=200_000.0, cycles=5)       # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtsim import md
from mtsim.checks import integer, md_arguments, non_negative, output_file, positive
from mtsim.field import cosine
from mtsim.md import Simulation, make_integrator
from mtsim.trajectory import open_log, open_trajectory
from mtsim.units import MV_PER_CM

AXES = {"x": 0, "y": 1, "z": 2}
PE_LOOP_FILES = ("pe_loop.csv", "pe_loop.png")
"""The files :func:`write_pe_loop` writes."""


def run(model, structure, field, ensemble: str = "nvt-nh", **kwargs):
    """MD in the field ``field`` (V/Å: constant vector, callable of t in fs, or ``mtsim.field.ElectricField``);
    every other argument as :func:`mtsim.md.run`. Returns the simulation; ``sim.state.polarization`` is P in
    μC/cm²."""
    return md.run(model, structure, ensemble=ensemble, field=field, **kwargs)


@dataclass
class HysteresisResult:
    """A P–E loop averaged over cycles. ``field`` V/Å and ``polarization`` μC/cm² (along ``axis``, centred so
    that its mean over a cycle is zero) sample one cycle from +E_max; ``remanent`` μC/cm² and ``coercive`` V/Å
    (NaN if P never changes sign); ``times``/``field_trace``/``polarization_trace`` hold the raw run
    (fs, V/Å, μC/cm², uncentred); ``period`` is the period used (a whole number of time steps)."""

    axis: str
    field: np.ndarray
    polarization: np.ndarray
    remanent: float
    coercive: float
    period: float
    cycles: int
    times: np.ndarray
    field_trace: np.ndarray
    polarization_trace: np.ndarray

    @property
    def field_MV_cm(self) -> np.ndarray:
        return self.field / MV_PER_CM

    @property
    def coercive_MV_cm(self) -> float:
        return self.coercive / MV_PER_CM


def _crossings(x: np.ndarray, y: np.ndarray, sign: int) -> list[float]:
    """Values of y where the closed polyline x crosses zero going in direction ``sign`` (linear interpolation)."""
    out = []
    for k in range(len(x)):
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        if sign > 0 and x0 < 0 <= x1 or sign < 0 and x0 > 0 >= x1:
            out.append(float(y0 + (y1 - y0) * (0 - x0) / (x1 - x0)))
    return out


def loop_metrics(field: np.ndarray, polarization: np.ndarray) -> tuple[float, float]:
    """(remanent polarization, coercive field) of a closed loop sampled in order.

    Remanent: half the gap between the branches at E = 0, (P at the falling-E crossing − P at the rising one)/2.
    Coercive: half the distance between the zero crossings of P, (E where P rises through 0 − E where it falls)/2.
    Several crossings (noise) are averaged; NaN where a crossing is missing.
    """
    down, up = _crossings(field, polarization, -1), _crossings(field, polarization, +1)
    remanent = (np.mean(down) - np.mean(up)) / 2 if down and up else math.nan
    rise, fall = _crossings(polarization, field, +1), _crossings(polarization, field, -1)
    coercive = (np.mean(rise) - np.mean(fall)) / 2 if rise and fall else math.nan
    return float(remanent), float(coercive)


def hysteresis_arguments(field_max, period, cycles, temperature, timestep, ensemble, equilibration=0.0) -> None:
    """The arguments of :func:`hysteresis`: ``field_max`` > 0 V/Å, ``period`` > 0 fs, ``cycles`` >= 1,
    ``equilibration`` >= 0 fs and those of an MD run (see ``mtsim.checks.md_arguments``)."""
    positive("field_max", field_max)
    positive("period", period)
    integer("cycles", cycles, 1)
    non_negative("equilibration", equilibration)
    md_arguments(ensemble, timestep, 0, temperature)


def hysteresis(
    model,
    structure,
    field_max: float,
    period: float,
    cycles: int = 5,
    temperature: float = 300.0,
    axis: str = "z",
    timestep: float = 2.0,
    ensemble: str = "nvt-nh",
    seed=None,
    tdamp: float = 100.0,
    friction: float = 0.01,
    equilibration: float = 0.0,
    points: int | None = None,
    momenta=None,
    log=None,
    trajectory=None,
    interval: int = 10,
    hooks=(),
    overwrite: bool = False,
) -> HysteresisResult:
    """Drive a structure with E(t) = field_max cos(2π t/period) along ``axis`` and average P(E) over ``cycles``.

    ``field_max`` V/Å (paper: 4 MV/cm = 0.04 V/Å); ``period`` fs (paper: 200 ps), rounded to whole time steps;
    ``timestep`` fs; ``temperature`` K with ``ensemble`` ``"nvt-nh"`` (paper) or ``"nvt-langevin"``/``"nve"``;
    ``equilibration`` fs at zero field before the first cycle; ``points``: phase bins of the returned loop
    (default: one per step, at most 200). ``log``/``trajectory``/``interval``/``hooks``/``overwrite`` as
    ``Simulation.run``.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {tuple(AXES)}, got {axis!r}")
    hysteresis_arguments(field_max, period, cycles, temperature, timestep, ensemble, equilibration)
    output_file("log", log, overwrite)
    output_file("trajectory", trajectory, overwrite)
    steps_per_cycle = int(round(period / timestep))
    if steps_per_cycle < 4:
        raise ValueError(f"period {period} fs is shorter than 4 time steps of {timestep} fs")
    period = steps_per_cycle * timestep
    k = AXES[axis]
    amplitude = np.zeros(3)
    amplitude[k] = field_max
    equilibration_steps = int(round(equilibration / timestep))
    equilibration = equilibration_steps * timestep
    velocity_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    integrator = make_integrator(ensemble, timestep, temperature, seed=noise_seed, friction=friction, tdamp=tdamp)
    drive = cosine(amplitude, period, start=equilibration)
    sim = Simulation(
        model, structure, integrator, temperature=temperature, seed=velocity_seed, momenta=momenta, field=drive
    )
    hooks = list(hooks)
    times, fields, pols = [], [], []

    def sample(s):
        times.append(s.state.time)
        fields.append(s.state.field[k])
        pols.append(s.state.polarization[k])

    with open_log(log, overwrite) as logger, open_trajectory(trajectory, overwrite) as writer:
        if equilibration_steps:
            sim.run(equilibration_steps, log=logger, trajectory=writer, interval=interval, hooks=hooks)
        sample(sim)
        sim.run(cycles * steps_per_cycle, log=logger, trajectory=writer, interval=interval, hooks=[sample, *hooks])
    times, fields, pols = np.array(times), np.array(fields), np.array(pols)
    per_phase_p = pols[:-1].reshape(cycles, steps_per_cycle).mean(axis=0)
    per_phase_e = fields[:-1].reshape(cycles, steps_per_cycle).mean(axis=0)
    points = min(steps_per_cycle, 200) if points is None else max(4, min(int(points), steps_per_cycle))
    groups = np.array_split(np.arange(steps_per_cycle), points)
    loop_e = np.array([per_phase_e[g].mean() for g in groups])
    loop_p = np.array([per_phase_p[g].mean() for g in groups])
    loop_p -= loop_p.mean()
    remanent, coercive = loop_metrics(loop_e, loop_p)
    return HysteresisResult(
        axis=axis,
        field=loop_e,
        polarization=loop_p,
        remanent=remanent,
        coercive=coercive,
        period=period,
        cycles=cycles,
        times=times,
        field_trace=fields,
        polarization_trace=pols,
    )


def write_pe_loop(result: HysteresisResult, directory: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``pe_loop.csv`` (field_MV_cm, polarization_uC_cm2; the loop closed by repeating its first point) and
    ``pe_loop.png`` into ``directory`` (existing ones only with ``overwrite``); returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    e = np.append(result.field_MV_cm, result.field_MV_cm[0])
    p = np.append(result.polarization, result.polarization[0])
    csv_path, png_path = (directory / name for name in PE_LOOP_FILES)
    for path in (csv_path, png_path):
        output_file("directory", path, overwrite)
    with open(csv_path, "w") as handle:
        handle.write("field_MV_cm,polarization_uC_cm2\n")
        for x, y in zip(e, p):
            handle.write(f"{x:.10g},{y:.10g}\n")
    figure = Figure(figsize=(4.5, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(e, p, "-", lw=1.5, color="tab:blue")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.axvline(0, color="0.7", lw=0.6)
    ax.set_xlabel(f"E$_{result.axis}$ (MV/cm)")
    ax.set_ylabel(f"P$_{result.axis}$ (μC/cm$^2$)")
    title = f"{result.cycles} cycle(s), period {result.period / 1000:g} ps"
    if math.isfinite(result.remanent):
        title += f"\nP$_r$ = {result.remanent:.3g} μC/cm$^2$"
    if math.isfinite(result.coercive):
        title += f", E$_c$ = {result.coercive_MV_cm:.3g} MV/cm"
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(png_path)
    return csv_path, png_path
