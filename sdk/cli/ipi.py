"""``mtsim ipi``: mtsim as a force field (driver) for i-PI, LAMMPS ``fix ipi``-style servers and ASE's socket server."""

from __future__ import annotations

import click

from mtsim.cli.common import load_model, model_options, read_structure


@click.command("ipi")
@click.argument("structure", type=click.Path(exists=True, dir_okay=False))
@model_options
@click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help="i-PI's inet socket (<ffsocket mode='inet'>)  [default: localhost:65535, i-PI's default]",
)
@click.option(
    "--unix",
    default=None,
    metavar="NAME",
    help="i-PI's unix socket <address> NAME, i.e. /tmp/ipi_NAME (a NAME with '/' is a full path).",
)
@click.option(
    "--reconnect",
    is_flag=True,
    help="If i-PI closes the connection without EXIT, connect again (within --connect-timeout).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="s: a started message must be complete (and answers sent) within this time.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="s: longest wait for i-PI's next message, then stop (0: wait forever).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="s: how long to keep trying to reach i-PI.",
)
@click.option("--quiet", is_flag=True, help="No connection messages on stderr.")
def ipi(
    structure, model_path, device, precision, address, unix, reconnect, timeout, idle_timeout, connect_timeout, quiet
):
    """Serve the model to i-PI over a socket until i-PI sends EXIT.

    STRUCTURE (any ASE format, last frame) gives the atomic numbers in i-PI's atom order and the periodic
    directions; i-PI sends positions and cell. Answers energy, forces, virial and, in the extras JSON, Born charges
    ("BEC", as i-PI's eda-nve/eda-nvt read them with <bec mode="driver"/>), dielectric, magmoms and charges.
    """
    from mtsim.ipi import Driver, IPIError

    if address is not None and unix is not None:
        raise click.UsageError("give either --address HOST:PORT or --unix NAME, not both")
    atoms = read_structure(structure)
    model = load_model(model_path, device, precision)
    log = None if quiet else (lambda line: click.echo(line, err=True))
    try:
        driver = Driver(
            model,
            atoms,
            address=address,
            unix=unix,
            timeout=timeout,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            reconnect=reconnect,
            log=log,
        )
    except ValueError as err:  # before connecting: elements, address
        raise click.UsageError(str(err)) from None
    try:
        count = driver.serve()
    except (IPIError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    if not quiet:
        click.echo(f"served {count} structures", err=True)
