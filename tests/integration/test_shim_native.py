# SPDX-License-Identifier: MIT
"""Non-Python processes under the shim: native attribution only (no interpreter to ask).

Not parametrized over interpreters: no CPython is involved.
"""

from __future__ import annotations

import pytest
from helpers import (
    FIXTURES,
    assert_consistent,
    compile_c,
    describe_row,
    find_row,
    format_rows,
    rows_of,
    run_command,
)

pytestmark = pytest.mark.integration

LEAKY_NATIVE = FIXTURES / "leakers" / "leaky_native.c"


def test_shell_runs_and_reports_native_rows(shim, log_dir):
    # GIVEN /bin/sh running ls under the shim
    result = run_command(["/bin/sh", "-c", "ls / > /dev/null"], shim=shim, log_dir=log_dir)
    # THEN it works, and its exit dump(s) hold native rows only, with no Python version
    assert result.returncode == 0, result.describe()
    assert_consistent(result.dumps)
    exits = [d for d in result.dumps if d["reason"] == "exit"]
    assert exits, "no exit dump; " + result.describe()
    for dump in result.dumps:
        assert dump["python"] is None, f"pid {dump['pid']}: python={dump['python']!r} in a non-Python process"
        not_native = [s for s in dump["sites"] if not s["native"]]
        assert not not_native, (
            f"pid {dump['pid']}: non-native sites in a non-Python process: {not_native[:5]}"
        )
    assert any(dump["sites"] for dump in exits), "exit dumps without any site; " + result.describe()


def test_c_program_leaky_and_healthy_functions(shim, cc, tmp_path, log_dir):
    # GIVEN a C program (-O0 -g -rdynamic) with leaky_function() and healthy_function(), 200 x 4 KiB each
    exe = compile_c([LEAKY_NATIVE], tmp_path / "leaky_native", "-O0", "-g", "-rdynamic")
    result = run_command([exe, "200"], shim=shim, log_dir=log_dir)
    assert result.returncode == 0 and result.stdout == "native-ok\n", result.describe()
    assert_consistent(result.dumps)
    dump = result.exit_dump()
    assert dump["python"] is None
    rows = rows_of(dump)
    # THEN the leak is a native row named after its function, >= 80 % retained ...
    leak = find_row(rows, function="leaky_function", native=True)
    assert leak.line == 0 and leak.file.endswith("leaky_native"), describe_row(leak)
    assert leak.count >= 200, describe_row(leak)
    assert leak.retention_pct is not None and leak.retention_pct >= 80.0, describe_row(leak)
    # ... and its healthy twin <= 20 %
    healthy = find_row(rows, function="healthy_function", native=True)
    assert healthy.count >= 200, describe_row(healthy)
    assert healthy.retention_pct is not None and healthy.retention_pct <= 20.0, describe_row(healthy)
    assert all(r.native for r in rows), format_rows([r for r in rows if not r.native])


def test_programs_that_change_credentials_are_not_broken(shim, log_dir):
    # GIVEN setpriv (which drops to nobody: glibc then changes the ids of every thread of the
    # process and aborts if one differs) and a C program under the shim, tracking at once
    import os
    import shutil

    if os.geteuid() != 0:
        pytest.skip("dropping to nobody needs root (CI runs as root)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # util-linux: on every Debian/Ubuntu
        pytest.fail("setpriv (util-linux) is missing")
    env_extra = {"TRACKLEAK_STARTUP_DELAY": "0", "TRACKLEAK_QUIET": "1"}
    # WHEN it runs 20 times
    codes = []
    for _ in range(20):
        result = run_command(
            [setpriv, "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "/bin/true"],
            shim=shim,
            log_dir=log_dir,
            env=env_extra,
        )
        codes.append(result.returncode)
    # THEN it never dies: the shim starts no thread of its own in a non-Python process
    assert codes == [0] * 20, codes
