# SPDX-License-Identifier: MIT
"""Where rows come from: the shim's live shared-memory table, its JSON-lines dumps, (later) eBPF.

Every source yields ``trackleak.table.Row`` objects with ``source`` and ``pid`` set.
"""
