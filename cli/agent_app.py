# SPDX-License-Identifier: MIT
"""`trackleak-agent`: the eBPF agent (--pid) and the host agent; the command is in
cli/commands/agent.py. This entry point says so clearly when that part of the package (bcc and
the BPF programs) is missing from a build, instead of a traceback.
"""

import importlib
import sys

EXIT_UNAVAILABLE = 2
MODULE = "trackleak.cli.commands.agent"


def main() -> None:
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (MODULE, "trackleak.ebpf"):
            raise
        print("trackleak-agent: the eBPF agent is not available yet in this build", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)
    entry = getattr(module, "main", None)
    if callable(entry):
        entry()
        return
    app = getattr(module, "app", None)
    if app is None:
        print(f"trackleak-agent: {MODULE} has neither main() nor app", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)
    app(prog_name="trackleak-agent")


if __name__ == "__main__":
    main()
