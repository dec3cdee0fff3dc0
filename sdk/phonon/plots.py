"""PNG plots (matplotlib's Agg canvas, no global backend change): band structure, DOS, QHA."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtsim.phonon.bands import BandStructure
from mtsim.phonon.mesh import DensityOfStates
from mtsim.phonon.qha import QHAResult


def _label(name: str) -> str:
    return "Γ" if name == "G" else name


def plot_bands(path, bands: BandStructure, title: str = "") -> None:
    """Frequencies (THz) along the path; breaks in the path are joined as 'X|U' tick labels."""
    figure = Figure(figsize=(7, 4.5))
    ax = figure.add_subplot()
    ticks, labels = [bands.distances[0][0]], [_label(bands.labels[0][0])]
    for x, f, (start, end) in zip(bands.distances, bands.frequencies, bands.labels):
        ax.plot(x, f, color="tab:blue", lw=1)
        if ticks[-1] == x[0] and labels[-1] != _label(start):
            labels[-1] += "|" + _label(start)
        ticks.append(x[-1])
        labels.append(_label(end))
    for x in ticks:
        ax.axvline(x, color="0.7", lw=0.6)
    ax.axhline(0, color="0.5", lw=0.6, ls="--")
    ax.set_xticks(ticks, labels)
    ax.set_xlim(ticks[0], ticks[-1])
    ax.set_ylabel("Frequency (THz)")
    ax.set_title(title)
    FigureCanvasAgg(figure).print_png(path)


def plot_dos(path, dos: DensityOfStates, title: str = "") -> None:
    """Total DOS (states/THz per unit cell) versus frequency (THz)."""
    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot()
    ax.plot(dos.frequencies, dos.dos, color="tab:blue", lw=1)
    ax.fill_between(dos.frequencies, dos.dos, alpha=0.2)
    ax.set_xlabel("Frequency (THz)")
    ax.set_ylabel("DOS (states/THz/cell)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    FigureCanvasAgg(figure).print_png(path)


def plot_qha(path, results: list[QHAResult], title: str = "") -> None:
    """V(T), G(T) and the thermal expansion at each pressure."""
    figure = Figure(figsize=(12, 4))
    axes = figure.subplots(1, 3)
    for r in results:
        for ax, y in zip(axes, (r.volume, r.gibbs, r.thermal_expansion * 1e6)):
            ax.plot(r.temperatures, np.where(r.within_range, y, np.nan), label=f"{r.pressure:g} GPa")
    for ax, name in zip(axes, ("Volume (Å³)", "G (eV/cell)", "α_V (10⁻⁶/K)")):
        ax.set_xlabel("Temperature (K)")
        ax.set_ylabel(name)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(path)
