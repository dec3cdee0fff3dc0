"""The ``mtsim`` command line (click): one module per job, registered on one group here.

Commands that need the ``train`` extra (``convert``) import torch inside their bodies only.
"""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="mtsim")
def main():
    """mtsim: multi-task materials foundation model (energy, forces, stress, magmoms, charges, Z*, eps_inf)."""


def _register() -> None:
    from mtsim.cli.ipi import ipi
    from mtsim.cli.md import hysteresis, md, relax
    from mtsim.cli.phonon import phonon, qha
    from mtsim.cli.predict import predict
    from mtsim.cli.run import run
    from mtsim.cli.train import train
    from mtsim.converters.cli import convert, info

    for command in (convert, info, predict, md, relax, hysteresis, phonon, qha, ipi, train, run):
        main.add_command(command)


_register()
