"""`trackleak-agent`: attach to running processes with eBPF (thin Typer layer over agent.py), or,
without --pid, watch the whole host (trackleak.fleet: the host agent).

    sudo trackleak-agent --pid 1234 [--pid 5678] [--duration S] [--interval S] [--json PATH]
    sudo trackleak-agent [--once] [--name RE] [--user U] [--ebpf-window 10 --ebpf-period 60] ...

cli/agent_app.py (the installed entry point) calls main() here.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from trackleak.cli._common import SORT_HELP, SortBy
from trackleak.errors import UserError

EXIT_USAGE = 2

HOST = "Host agent (without --pid)"
ES = "Elasticsearch"


class EsShip(str, Enum):
    all = "all"
    requested = "requested"


app = typer.Typer(
    add_completion=False,
    help="Show which Python line or native function keeps the memory it allocates, in running "
    "processes (no restart). With --pid: attach to those processes through eBPF (needs root, or "
    "CAP_BPF + CAP_PERFMON, and bcc). Without --pid: the host agent: find the Python processes of "
    "this host (filters below), read those started with the shim (LD_PRELOAD) through their "
    "shared-memory table (no root needed for your own processes) and watch the others through "
    "eBPF for --ebpf-window seconds out of every --ebpf-period; one merged table.",
)


@app.command()
def attach(
    pid: Annotated[
        Optional[List[int]],
        typer.Option(
            "--pid", "-p", help="Process to attach to (repeat for several). Without it: the host agent."
        ),
    ] = None,
    duration: Annotated[
        Optional[float], typer.Option(min=0.1, help="Stop after S seconds (default: until Ctrl-C or exit).")
    ] = None,
    interval: Annotated[
        Optional[float],
        typer.Option(
            min=0.1,
            help="Seconds between reads (default: 1 with --pid; 5 for the host agent, "
            "which also looks for new processes at each).",
            show_default=False,
        ),
    ] = None,
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
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="One discovery and one interval, print the table, exit (cron, tests).",
            rich_help_panel=HOST,
        ),
    ] = False,
    name: Annotated[
        Optional[List[str]],
        typer.Option(
            "--name",
            metavar="REGEX",
            rich_help_panel=HOST,
            help="Watch only processes whose name (comm, or the executable's file name) matches "
            "(repeatable: any of them).",
        ),
    ] = None,
    cmdline: Annotated[
        Optional[List[str]],
        typer.Option(
            "--cmdline",
            metavar="REGEX",
            rich_help_panel=HOST,
            help="Watch only processes whose command line (arguments joined by spaces) matches.",
        ),
    ] = None,
    user: Annotated[
        Optional[List[str]],
        typer.Option(
            "--user",
            metavar="USER",
            rich_help_panel=HOST,
            help="Watch only processes of this user (name or uid).",
        ),
    ] = None,
    cgroup: Annotated[
        Optional[List[str]],
        typer.Option(
            "--cgroup",
            metavar="REGEX",
            rich_help_panel=HOST,
            help="Watch only processes with a cgroup path (/proc/PID/cgroup) that matches, "
            "e.g. 'system.slice/myapp'.",
        ),
    ] = None,
    exclude_name: Annotated[
        Optional[List[str]],
        typer.Option(
            "--exclude-name",
            metavar="REGEX",
            rich_help_panel=HOST,
            help="Never watch processes whose name matches.",
        ),
    ] = None,
    exclude_cmdline: Annotated[
        Optional[List[str]],
        typer.Option(
            "--exclude-cmdline",
            metavar="REGEX",
            rich_help_panel=HOST,
            help="Never watch processes whose command line matches.",
        ),
    ] = None,
    exclude_user: Annotated[
        Optional[List[str]],
        typer.Option(
            "--exclude-user", metavar="USER", rich_help_panel=HOST, help="Never watch processes of this user."
        ),
    ] = None,
    exclude_cgroup: Annotated[
        Optional[List[str]],
        typer.Option(
            "--exclude-cgroup",
            metavar="REGEX",
            rich_help_panel=HOST,
            help="Never watch processes in a matching cgroup.",
        ),
    ] = None,
    any_process: Annotated[
        bool,
        typer.Option(
            "--any-process", rich_help_panel=HOST, help="Not only Python processes (needs an include filter)."
        ),
    ] = False,
    ebpf_window: Annotated[
        Optional[float],
        typer.Option(
            "--ebpf-window",
            min=1.0,
            metavar="S",
            rich_help_panel=HOST,
            show_default=False,
            help="Seconds attached in each period (default 10). A block counts as "
            "retained when held S/2 seconds. >= --ebpf-period: attached all the time.",
        ),
    ] = None,
    ebpf_period: Annotated[
        Optional[float],
        typer.Option(
            "--ebpf-period",
            min=1.0,
            metavar="S",
            rich_help_panel=HOST,
            show_default=False,
            help="Seconds between the starts of two eBPF windows (default 60).",
        ),
    ] = None,
    ebpf: Annotated[
        bool,
        typer.Option(
            "--ebpf/--no-ebpf",
            rich_help_panel=HOST,
            help="Watch processes without the shim through eBPF (needs root), or only shim ones.",
        ),
    ] = True,
    host_name: Annotated[
        Optional[str],
        typer.Option(
            "--host-name",
            rich_help_panel=HOST,
            show_default=False,
            help="The host name put in every row (default: this host's name).",
        ),
    ] = None,
    es_ship: Annotated[
        Optional[EsShip],
        typer.Option(
            "--es-ship",
            rich_help_panel=ES,
            show_default=False,
            help="With ENABLE_ELASTICSEARCH=1 and ELASTICSEARCH_URL (+ ELASTICSEARCH_API_KEY, or "
            "_USERNAME/_PASSWORD, _SSL_VERIFY, _CA_FILE, _CLIENT_CERT/_KEY, _INDEX) in the agent's "
            "environment, each interval's rows are shipped: 'all' (default) every watched "
            "process, 'requested' only processes with ENABLE_ELASTICSEARCH=1 in their own "
            "environment. A process's own ELASTICSEARCH_INDEX and NOMAD_JOB_NAME are used for its "
            "documents (nothing else is read from it); otherwise the agent's index and 'unknown'.",
        ),
    ] = None,
) -> None:
    """Attach to --pid PID ... (source "ebpf"), or without --pid watch the host's Python processes."""
    if not pid:
        host_opts = dict(
            once=once,
            name=name,
            cmdline=cmdline,
            user=user,
            cgroup=cgroup,
            exclude_name=exclude_name,
            exclude_cmdline=exclude_cmdline,
            exclude_user=exclude_user,
            exclude_cgroup=exclude_cgroup,
            any_process=any_process,
            ebpf_window=ebpf_window,
            ebpf_period=ebpf_period,
            ebpf=ebpf,
            host_name=host_name,
            es_ship=(es_ship or EsShip.all).value,
            duration=duration,
            interval=interval,
            json_path=json_path,
            sample_rate=sample_rate,
            sample_bytes=sample_bytes,
            min_size=min_size,
            top=top,
            sort=SortBy(sort).value,
            live=live,
            quiet=quiet,
            python=python,
        )
        raise typer.Exit(_host_agent(**host_opts))
    given = [
        flag
        for flag, value in (
            ("--once", once),
            ("--name", name),
            ("--cmdline", cmdline),
            ("--user", user),
            ("--cgroup", cgroup),
            ("--exclude-name", exclude_name),
            ("--exclude-cmdline", exclude_cmdline),
            ("--exclude-user", exclude_user),
            ("--exclude-cgroup", exclude_cgroup),
            ("--any-process", any_process),
            ("--ebpf-window", ebpf_window is not None),
            ("--ebpf-period", ebpf_period is not None),
            ("--no-ebpf", not ebpf),
            ("--host-name", host_name),
        )
        if value
    ]
    if given:
        typer.echo(
            f"trackleak-agent: error: {', '.join(given)}: only for the host agent (without --pid)", err=True
        )
        raise typer.Exit(EXIT_USAGE)
    from trackleak.ebpf.agent import AgentOptions, run_agent
    from trackleak.fleet.es import FleetShipping, NotShippingNotice

    opts = AgentOptions(
        pids=list(pid),
        duration=duration,
        interval=1.0 if interval is None else interval,
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
        shipping = FleetShipping.from_env(os.environ, ship=(es_ship or EsShip.all).value)
        status = run_agent(opts, sinks=[shipping if shipping is not None else NotShippingNotice()])
    except UserError as exc:
        typer.echo(f"trackleak-agent: error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(status)


DEFAULT_WINDOW, DEFAULT_PERIOD, DEFAULT_HOST_INTERVAL = 10.0, 60.0, 5.0


def _host_agent(
    *,
    once,
    name,
    cmdline,
    user,
    cgroup,
    exclude_name,
    exclude_cmdline,
    exclude_user,
    exclude_cgroup,
    any_process,
    ebpf_window,
    ebpf_period,
    ebpf,
    host_name,
    es_ship,
    duration,
    interval,
    json_path,
    sample_rate,
    sample_bytes,
    min_size,
    top,
    sort,
    live,
    quiet,
    python,
) -> int:
    import socket

    from trackleak.fleet import DutyCycle, Filters, FleetOptions, run_fleet

    try:
        filters = Filters.build(
            names=name,
            cmdlines=cmdline,
            users=user,
            cgroups=cgroup,
            exclude_names=exclude_name,
            exclude_cmdlines=exclude_cmdline,
            exclude_users=exclude_user,
            exclude_cgroups=exclude_cgroup,
            any_process=any_process,
        )
        window = DEFAULT_WINDOW if ebpf_window is None else ebpf_window
        period = DEFAULT_PERIOD if ebpf_period is None else ebpf_period
        if ebpf_window is not None and ebpf_period is None and window > period:
            period = window  # "--ebpf-window 120" alone: attached all the time
        host = (host_name if host_name is not None else socket.gethostname()).strip()
        if not host or len(host) > 255 or any(ord(c) < 32 for c in host):
            raise UserError(f"--host-name {host_name!r}: give a non-empty name without control characters")
        opts = FleetOptions(
            filters=filters,
            interval=DEFAULT_HOST_INTERVAL if interval is None else interval,
            duration=duration,
            once=once,
            duty=DutyCycle(window, period),
            ebpf=ebpf,
            json_path=json_path,
            host=host,
            sample_rate=sample_rate,
            sample_bytes=sample_bytes,
            min_size=min_size,
            python_frames=python,
            top=top,
            sort=sort,
            live=live,
            progress=not quiet,
        )
        from trackleak.fleet.es import FleetShipping, NotShippingNotice

        shipping = FleetShipping.from_env(os.environ, ship=es_ship)
        return run_fleet(opts, sinks=[shipping if shipping is not None else NotShippingNotice()])
    except UserError as exc:
        typer.echo(f"trackleak-agent: error: {exc}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: `trackleak-agent --pid ...` (the command name is optional)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    # One command: `trackleak-agent --pid 1` works without naming it.
    command(args=args, prog_name="trackleak-agent", standalone_mode=True)


if __name__ == "__main__":
    main()
