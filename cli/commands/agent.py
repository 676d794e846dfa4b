# SPDX-License-Identifier: MIT
"""`trackleak-agent`: attach to running processes with eBPF (trackleak.ebpf.agent.PidSource), or,
without --pid, watch the whole host (trackleak.fleet.daemon.HostSource); both run as a
trackleak.session, like `trackleak run`, with the options of cli/options.py.

    sudo trackleak-agent --pid 1234 [--pid 5678] [--duration S] [--interval S] [--json PATH]
    sudo trackleak-agent [--once] [--name RE] [--user U] [--ebpf-window 10 --ebpf-period 60] ...

cli/agent_app.py (the installed entry point) calls main() here.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import List, Optional

import typer
from typing_extensions import Annotated

from trackleak import config
from trackleak.cli import options
from trackleak.cli._common import SortBy
from trackleak.errors import UserError

EXIT_USAGE = 2

HOST = "Host agent (without --pid)"
ES = "Elasticsearch"


def _filter(flag: str, metavar: str, help: str):
    """A repeatable filter of the host agent (trackleak.fleet.discovery.Filters)."""
    return Annotated[
        Optional[List[str]], typer.Option(flag, metavar=metavar, rich_help_panel=HOST, help=help)
    ]


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
    ctx: typer.Context,
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
            help=f"Seconds between reads (default: {config.default('interval', 'agent'):g} with --pid; "
            f"{config.default('interval', 'host'):g} for the host agent, which also looks for new "
            "processes at each).",
            show_default=False,
        ),
    ] = None,
    json_path: options.JsonPath = None,
    sample_rate: options.SampleRate = None,
    sample_bytes: options.SampleBytes = None,
    min_size: options.MinSize = None,
    stack_depth: options.StackDepth = None,
    top: options.Top = None,
    sort: options.Sort = None,
    live: options.Live = None,
    quiet: options.Quiet = False,
    python: Annotated[
        bool,
        typer.Option(
            "--python/--native-only", help="Walk Python frames (default) or attribute natively only."
        ),
    ] = True,
    arenas: Annotated[
        Optional[bool],
        typer.Option(
            "--arenas/--no-arenas",
            envvar="TRACKLEAK_EBPF_ARENAS",
            show_default=False,
            help="Charge pymalloc's arenas (Python's small objects, 256 KiB-1 MiB at a time) to the "
            "Python line that made the interpreter map one (default on: a few probes on mmap/munmap, "
            "cost within noise).",
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="One discovery and one interval, print the table, exit (cron, tests).",
            rich_help_panel=HOST,
        ),
    ] = False,
    name: _filter(
        "--name",
        "REGEX",
        "Watch only processes whose name (comm, or the executable's file name) matches "
        "(repeatable: any of them).",
    ) = None,
    cmdline: _filter(
        "--cmdline", "REGEX", "Watch only processes whose command line (arguments joined by spaces) matches."
    ) = None,
    user: _filter("--user", "USER", "Watch only processes of this user (name or uid).") = None,
    cgroup: _filter(
        "--cgroup",
        "REGEX",
        "Watch only processes with a cgroup path (/proc/PID/cgroup) that matches, e.g. 'system.slice/myapp'.",
    ) = None,
    exclude_name: _filter("--exclude-name", "REGEX", "Never watch processes whose name matches.") = None,
    exclude_cmdline: _filter(
        "--exclude-cmdline", "REGEX", "Never watch processes whose command line matches."
    ) = None,
    exclude_user: _filter("--exclude-user", "USER", "Never watch processes of this user.") = None,
    exclude_cgroup: _filter(
        "--exclude-cgroup", "REGEX", "Never watch processes in a matching cgroup."
    ) = None,
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
            help=f"Seconds attached in each period (default {config.default('ebpf_window', 'host'):g}). "
            "A block counts as "
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
            help="Seconds between the starts of two eBPF windows "
            f"(default {config.default('ebpf_period', 'host'):g}).",
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
            "environment (or [elasticsearch] in --config), each interval's rows are shipped: "
            "'all' (default) every watched process, 'requested' only processes with "
            "ENABLE_ELASTICSEARCH=1 in their own environment. A process's own "
            "ELASTICSEARCH_INDEX and NOMAD_JOB_NAME are used for its documents (nothing else is "
            "read from it); otherwise the agent's index and 'unknown'.",
        ),
    ] = None,
    config_file: options.config_option("agent") = None,
) -> None:
    """Attach to --pid PID ... (source "ebpf"), or without --pid watch the host's Python processes."""
    cfg = options.loaded_config(ctx)
    for note in cfg.notes:
        typer.echo(f"trackleak-agent: {note}", err=True)
    es_environ = cfg.es_environ(os.environ)
    command = "agent" if pid else "host"
    shared = dict(
        duration=duration,
        interval=options.pick(interval, "interval", command),
        json_path=json_path,
        sample_rate=options.pick(sample_rate, "sample_rate", command),
        sample_bytes=sample_bytes,
        min_size=options.pick(min_size, "min_size", command),
        stack_depth=options.pick(stack_depth, "stack_depth", command),
        top=options.pick(top, "top", command),
        sort=SortBy(options.pick(sort, "sort", command)).value,
        live=live,
        progress=not quiet,
        python_frames=python,
        arenas=arenas,
    )
    ship = (es_ship or EsShip(config.default("es_ship", "host"))).value
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
        )
        raise typer.Exit(_host_agent(host_opts, shared, ship=ship, es_environ=es_environ))
    # Host-agent flags given on the command line make no sense with --pid (from a configuration
    # file's [agent] table they are the host agent's settings: ignored here).
    host_only = {
        "once": "--once",
        "name": "--name",
        "cmdline": "--cmdline",
        "user": "--user",
        "cgroup": "--cgroup",
        "exclude_name": "--exclude-name",
        "exclude_cmdline": "--exclude-cmdline",
        "exclude_user": "--exclude-user",
        "exclude_cgroup": "--exclude-cgroup",
        "any_process": "--any-process",
        "ebpf_window": "--ebpf-window",
        "ebpf_period": "--ebpf-period",
        "ebpf": "--no-ebpf",
        "host_name": "--host-name",
    }
    given = [flag for name, flag in host_only.items() if _from_command_line(ctx, name)]
    if given:
        typer.echo(
            f"trackleak-agent: error: {', '.join(given)}: only for the host agent (without --pid)", err=True
        )
        raise typer.Exit(EXIT_USAGE)
    from trackleak.ebpf.agent import AgentOptions, run_agent
    from trackleak.fleet.es import FleetShipping, NotShippingNotice

    try:
        shipping = FleetShipping.from_env(es_environ, ship=ship)
        status = run_agent(
            AgentOptions(pids=list(pid), **shared),
            sinks=[shipping if shipping is not None else NotShippingNotice()],
        )
    except UserError as exc:
        typer.echo(f"trackleak-agent: error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(status)


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _host_agent(host: dict, shared: dict, *, ship: str, es_environ: dict) -> int:
    import socket

    from trackleak.fleet import DutyCycle, Filters, FleetOptions, run_fleet
    from trackleak.fleet.es import FleetShipping, NotShippingNotice

    try:
        filters = Filters.build(
            names=host["name"],
            cmdlines=host["cmdline"],
            users=host["user"],
            cgroups=host["cgroup"],
            exclude_names=host["exclude_name"],
            exclude_cmdlines=host["exclude_cmdline"],
            exclude_users=host["exclude_user"],
            exclude_cgroups=host["exclude_cgroup"],
            any_process=host["any_process"],
        )
        ebpf_window, ebpf_period = host["ebpf_window"], host["ebpf_period"]
        window = config.default("ebpf_window", "host") if ebpf_window is None else ebpf_window
        period = config.default("ebpf_period", "host") if ebpf_period is None else ebpf_period
        if ebpf_window is not None and ebpf_period is None and window > period:
            period = window  # "--ebpf-window 120" alone: attached all the time
        host_name = host["host_name"]
        name = (host_name if host_name is not None else socket.gethostname()).strip()
        if not name or len(name) > 255 or any(ord(c) < 32 for c in name):
            raise UserError(f"--host-name {host_name!r}: give a non-empty name without control characters")
        opts = FleetOptions(
            filters=filters,
            once=host["once"],
            duty=DutyCycle(window, period),
            ebpf=host["ebpf"],
            host=name,
            **shared,
        )
        shipping = FleetShipping.from_env(es_environ, ship=ship)
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
