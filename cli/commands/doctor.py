# SPDX-License-Identifier: MIT
"""`trackleak doctor`: can this machine attach the eBPF agent, and which interpreters are known."""

import typer

EXIT_CANNOT_ATTACH = 1


def doctor() -> None:
    """Check root/capabilities, the bpf syscall, uprobes, tracefs, kernel headers, BTF, bcc and
    the local CPythons; print the fix for anything missing (exit 1 when attaching cannot work)."""
    from trackleak.ebpf.doctor import can_attach, format_checks, run_checks

    checks = run_checks()
    typer.echo(format_checks(checks))
    if not can_attach(checks):
        typer.echo("trackleak doctor: this machine cannot attach yet (see the FAIL lines)", err=True)
        raise typer.Exit(EXIT_CANNOT_ATTACH)
    typer.echo("trackleak doctor: ready to attach (sudo trackleak-agent --pid PID)")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
