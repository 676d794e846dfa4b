# SPDX-License-Identifier: MIT
"""The host agent: `trackleak-agent` without --pid (discovery, routes, duty cycle, sinks)."""

from .daemon import FleetOptions, HostSource, host_session, run_fleet
from .discovery import Discovery, Filters, ProcInfo
from .routes import DutyCycle, EbpfRoute, ShimWatch

__all__ = [
    "Discovery",
    "DutyCycle",
    "EbpfRoute",
    "Filters",
    "FleetOptions",
    "HostSource",
    "ProcInfo",
    "ShimWatch",
    "host_session",
    "run_fleet",
]
