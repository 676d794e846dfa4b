# SPDX-License-Identifier: MIT
"""Errors a user can act on. The CLI prints their message on one line and exits 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a missing file, a bad option, a process that is not preloaded."""


class ShimMissingError(UserError):
    """The preload shim is not where the installed package expects it."""
