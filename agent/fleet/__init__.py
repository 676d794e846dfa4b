# SPDX-License-Identifier: MIT
"""The host agent: `trackleak-agent` without --pid (discovery, routes, duty cycle, sinks)."""

from .daemon import FleetDaemon, FleetOptions, run_fleet
from .discovery import Discovery, Filters, ProcInfo
from .routes import DutyCycle, EbpfRoute, ShimWatch

__all__ = [
    "Discovery",
    "DutyCycle",
    "EbpfRoute",
    "Filters",
    "FleetDaemon",
    "FleetOptions",
    "ProcInfo",
    "ShimWatch",
    "run_fleet",
]
