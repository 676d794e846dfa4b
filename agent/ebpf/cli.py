"""`trackleak-agent`: attach to running processes with eBPF (thin Typer layer over agent.py).

    sudo trackleak-agent --pid 1234 [--pid 5678] [--duration S] [--interval S] [--json PATH]

cli/agent_app.py (the installed entry point) calls main() here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from trackleak.cli._common import SORT_HELP, SortBy
from trackleak.errors import UserError

EXIT_USAGE = 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Attach to running processes (no restart) and show which Python line or native function "
    "keeps the memory it allocates. Needs root (or CAP_BPF + CAP_PERFMON) and bcc.",
)


@app.command()
def attach(
    pid: Annotated[List[int], typer.Option("--pid", "-p", help="Process to attach to (repeat for several).")],
    duration: Annotated[
        Optional[float], typer.Option(min=0.1, help="Detach after S seconds (default: until Ctrl-C or exit).")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between reads of the BPF maps.")] = 1.0,
    json_path: Annotated[
        Optional[Path],
        typer.Option("--json", help="Write the final table as JSON ({meta, sites}).", dir_okay=False),
    ] = None,
    sample_rate: Annotated[
        int,
        typer.Option(
            envvar="TRACKLEAK_SAMPLE_RATE",
            min=1,
            help="Sample allocations byte-weighted, one per N KiB allocated on average "
            "(an allocation of s bytes with p = 1 - exp(-s / N KiB)); 1: every allocation.",
        ),
    ] = 50,
    sample_bytes: Annotated[
        Optional[int],
        typer.Option(
            envvar="TRACKLEAK_SAMPLE_BYTES",
            min=1,
            help="The mean sampling interval in bytes (overrides --sample-rate).",
        ),
    ] = None,
    min_size: Annotated[
        int, typer.Option(envvar="TRACKLEAK_MIN_SIZE", min=0, help="Count allocations of at least N bytes.")
    ] = 500,
    top: Annotated[int, typer.Option(min=0, help="Rows to show (0: all).")] = 20,
    sort: Annotated[SortBy, typer.Option(help=SORT_HELP)] = SortBy.leak,
    live: Annotated[
        Optional[bool], typer.Option("--live/--no-live", help="Live view on stderr (default: on a terminal).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
    python: Annotated[
        bool,
        typer.Option(
            "--python/--native-only", help="Walk Python frames (default) or attribute natively only."
        ),
    ] = True,
) -> None:
    """Attach to --pid PID ... and report per-site retention (source "ebpf")."""
    from trackleak.ebpf.agent import AgentOptions, run_agent

    opts = AgentOptions(
        pids=list(pid),
        duration=duration,
        interval=interval,
        json_path=json_path,
        sample_rate=sample_rate,
        min_size=min_size,
        sample_bytes=sample_bytes,
        top=top,
        sort=SortBy(sort).value,
        live=live,
        progress=not quiet,
        python_frames=python,
    )
    try:
        status = run_agent(opts)
    except UserError as exc:
        typer.echo(f"trackleak-agent: error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(status)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: `trackleak-agent --pid ...` (the command name is optional)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    # One command: `trackleak-agent --pid 1` works without naming it.
    command(args=args, prog_name="trackleak-agent", standalone_mode=True)


if __name__ == "__main__":
    main()
