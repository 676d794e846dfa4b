# SPDX-License-Identifier: MIT
"""Typer entry points: `trackleak` (app.py) and `trackleak-agent` (agent_app.py). Thin: the logic
lives in the `trackleak` package (agent/ in this repository)."""
