# SPDX-License-Identifier: MIT
"""The report views on a real run, read by the real consumers (issue 9).

- ``trackleak report --html``: the page of a real ``trackleak run --json`` of a leaky fixture
  (tests/fixtures/views_leak.py), opened in Debian's Chromium driven through chromedriver by
  selenium: no console errors, the leaking function first, the chart and the flame graph drawn,
  clicking a frame focuses it (and a page whose rows carry ``stacks``: a caller focused).
- ``trackleak report --pprof``: read by the real ``go tool pprof -top``; the leaking function with
  the in-use bytes of the table and of the truth the fixture measured.
- ``trackleak diff``: two snapshots of the growing leak, the growth.

Chromium, chromedriver (scripts/setup.sh installs them) and Go are required: a missing one is an
error that says what to install, never a skip.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import FIXTURES, line_of, run_trackleak

FIXTURE = FIXTURES / "views_leak.py"
PER_ROUND, SIZE = 200, 4096
# 12 rounds 0.25 s apart: enough polls (--interval 0.2) for the run to see the leak keep growing
# on a loaded machine (it needs three readings and growth in the recent half of the window)
PAUSE_S, ROUNDS_BEFORE, ROUNDS_AFTER = 0.25, 2, 12
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def trackleak_run(workdir: Path, name: str, rounds: int) -> tuple[dict, dict]:
    """`trackleak run --json` of the fixture, every allocation sampled (exact live bytes)."""
    out, truth = workdir / f"{name}.json", workdir / f"{name}.truth.json"
    result = run_trackleak(
        "run",
        "--sample-rate",
        "1",
        "--interval",
        "0.2",
        "--json",
        str(out),
        "-q",
        str(FIXTURE),
        str(truth),
        str(rounds),
        str(PER_ROUND),
        str(SIZE),
        str(PAUSE_S),
        cwd=workdir,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), json.loads(truth.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shim):
    """Two snapshots of one growing leak: after a few rounds and after more."""
    workdir = tmp_path_factory.mktemp("views")
    before, before_truth = trackleak_run(workdir, "before", ROUNDS_BEFORE)
    after, after_truth = trackleak_run(workdir, "after", ROUNDS_AFTER)
    return {
        "dir": workdir,
        "before": (workdir / "before.json", before, before_truth),
        "after": (workdir / "after.json", after, after_truth),
    }


def hoard_row(doc: dict) -> dict:
    line = line_of(FIXTURE, "hoard")
    rows = [s for s in doc["sites"] if s["function"] == "hoard_blocks" and s["line"] == line]
    assert len(rows) == 1, [(s["function"], s["line"]) for s in doc["sites"][:10]]
    return rows[0]


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = run_trackleak("report", *args, cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run scripts/setup.sh (apt package {package})", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: run scripts/setup.sh (the test extra)", pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1200",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system chromedriver, named: selenium's manager downloads nothing
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")


def console_errors(driver) -> list:
    logs = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    return logs + list(driver.execute_script("return window.trackleakErrors || []"))


def frames(driver) -> list[dict]:
    """Every drawn frame of the flame graph: name, depth, x, width (SVG units)."""
    return driver.execute_script(
        """return Array.from(document.querySelectorAll('#flame rect.frame')).map(function (r) {
             return {name: r.dataset.name, depth: +r.dataset.depth, path: r.dataset.path,
                     x: +r.getAttribute('x'), w: +r.getAttribute('width'), fill: r.getAttribute('fill'),
                     title: r.querySelector('title').textContent}; });"""
    )


def click_frame(driver, name: str, depth: int) -> None:
    from selenium.webdriver.common.by import By

    rects = driver.find_elements(By.CSS_SELECTOR, f'#flame rect.frame[data-depth="{depth}"]')
    target = [r for r in rects if r.get_attribute("data-name") == name]
    assert target, f"no frame {name!r} at depth {depth}: {[r.get_attribute('data-name') for r in rects]}"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", target[0])
    target[0].click()


def test_html_report_in_chromium(runs, browser):
    # GIVEN the HTML report of a real run of a leaky program
    path, doc, _ = runs["after"]
    page = runs["dir"] / "report.html"
    report(str(path), "--html", str(page), cwd=runs["dir"])
    row = hoard_row(doc)
    series = [h["points"] for h in doc.get("history", []) if h["function"] == "hoard_blocks"]
    assert row["growing"], f"the run did not see the leak grow: {row}, series {series}"

    # WHEN Chromium opens it
    open_page(browser, page)

    # THEN it rendered without errors
    assert console_errors(browser) == []
    # the leaking function comes first, marked as a leak
    first = browser.execute_script(
        "var r = document.querySelector('#sites tbody tr');"
        "return [r.className, r.cells[0].textContent, r.cells[1].textContent];"
    )
    assert first[0] == "leak" and first[1] == "hoard_blocks"
    assert first[2].endswith(f"views_leak.py:{line_of(FIXTURE, 'hoard')}")
    # the chart has the leak's series first, rising left to right across the plot
    series = browser.execute_script(
        "return Array.from(document.querySelectorAll('#chart path.series')).map(function (p) {"
        "  var b = p.getBBox(); return {name: p.dataset.name, d: p.getAttribute('d'), w: b.width}; });"
    )
    assert series and series[0]["name"] == "hoard_blocks"
    points = [tuple(map(float, xy.split(","))) for xy in re.findall(r"[ML]([-\d.]+,[-\d.]+)", series[0]["d"])]
    assert len(points) >= 3 and series[0]["w"] > 300
    assert points[-1][1] < points[0][1] - 100  # SVG y grows downwards: the line climbed
    # the flame graph: the root, and the leak as the widest frame at its depth (1 when the run
    # recorded no call stacks; with the shim's stacks, under <module> and main)
    drawn = frames(browser)
    root = next(f for f in drawn if f["depth"] == 0)
    depth = max((f for f in drawn if f["name"] == "hoard_blocks"), key=lambda f: f["w"])["depth"]
    below = sorted((f for f in drawn if f["depth"] == depth), key=lambda f: -f["w"])
    assert root["name"] == "all" and len([f for f in drawn if f["depth"] == 1]) >= 2
    assert below[0]["name"] == "hoard_blocks" and below[0]["w"] > 0.5 * root["w"]
    # the growing site in red, as in the table; the others not
    assert below[0]["fill"] == "#e0443a" and all(f["fill"] != "#e0443a" for f in below[1:])
    assert all(f["fill"] != "#e0443a" for f in drawn if f["depth"] < depth)  # its callers are not

    # WHEN the leak's frame is clicked
    click_frame(browser, "hoard_blocks", depth)
    # THEN it is focused: the whole width, its siblings gone, the caption names it
    drawn = frames(browser)
    focused = [f for f in drawn if f["depth"] == depth]
    assert [f["name"] for f in focused] == ["hoard_blocks"]
    assert focused[0]["x"] == 0 and abs(focused[0]["w"] - root["w"]) <= 1
    assert "hoard_blocks" in browser.find_element("id", "focus").text
    # and clicking the root goes back
    click_frame(browser, "all", 0)
    assert len([f for f in frames(browser) if f["depth"] == depth]) == len(below)
    assert console_errors(browser) == []


def test_html_flame_graph_of_stacks_in_chromium(runs, browser, tmp_path):
    # GIVEN the real run's table with call stacks on the leaking row, in the format both routes
    # will write (trackleak.stacks): 3/4 of its live bytes through one caller, the rest another
    doc = copy.deepcopy(runs["after"][1])
    row = hoard_row(doc)
    site = [row["function"], row["file"], row["line"]]
    main = ["main", row["file"], 1]
    share = row["live_bytes"] * 3 // 4
    row["stacks"] = [
        {
            "frames": [main, ["caller_a", row["file"], 2], site],
            "live_bytes": share,
            "live_count": 0,
            "total_bytes": 0,
            "count": 0,
        },
        {
            "frames": [main, ["caller_b", row["file"], 3], site],
            "live_bytes": row["live_bytes"] - share,
            "live_count": 0,
            "total_bytes": 0,
            "count": 0,
        },
    ]
    stacked = tmp_path / "stacked.json"
    stacked.write_text(json.dumps(doc))
    page = tmp_path / "stacked.html"
    report(str(stacked), "--html", str(page), cwd=tmp_path)
    open_page(browser, page)
    assert console_errors(browser) == []
    drawn = frames(browser)
    width = next(f for f in drawn if f["depth"] == 0)["w"]
    callers = {f["name"]: f for f in drawn if f["depth"] == 2}
    assert callers["caller_a"]["w"] == pytest.approx(3 * callers["caller_b"]["w"], rel=0.02)

    # WHEN a caller is clicked
    click_frame(browser, "caller_a", 2)
    # THEN its callers stay above at full width, it takes the width, the other caller is gone,
    # and the leaking site below it holds its share
    drawn = frames(browser)
    by_depth = {d: [f for f in drawn if f["depth"] == d] for d in range(4)}
    assert [f["name"] for f in by_depth[1]] == ["main"] and [f["name"] for f in by_depth[2]] == ["caller_a"]
    assert all(abs(f["w"] - width) <= 1 for d in (0, 1, 2, 3) for f in by_depth[d])
    assert [f["name"] for f in by_depth[3]] == ["hoard_blocks"]
    from trackleak.render import human_bytes

    assert f"live {human_bytes(share)}" in by_depth[3][0]["title"]
    assert "all \u203a main \u203a caller_a" in browser.find_element("id", "focus").text


# --------------------------------------------------------------------------- pprof


def go_tool() -> str:
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "Go is missing: `go tool pprof` reads the profile (install Go, e.g. apt golang-go)", pytrace=False
    )


def pprof_top(profile: Path, sample_index: str, home: Path) -> dict[str, int]:
    """`go tool pprof -top` with exact units: function name -> flat value."""
    env = dict(
        os.environ,
        HOME=str(home),
        GOCACHE=str(home / "gocache"),
        GOPATH=str(home / "gopath"),
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOFLAGS="",
    )
    result = subprocess.run(
        [
            go_tool(),
            "tool",
            "pprof",
            "-top",
            "-nodecount=1000",
            f"-sample_index={sample_index}",
            *(["-unit=B"] if "space" in sample_index else []),
            str(profile),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"Type: {sample_index}" in result.stdout
    flat = {}
    for line in result.stdout.splitlines():
        m = re.match(r"\s*(\d+)B?\s+[\d.]+%\s+[\d.]+%\s+\d+B?\s+[\d.]+%\s+(.+)$", line)
        if m:
            flat[m.group(2).strip()] = int(m.group(1))
    return flat


def test_pprof_read_by_go_tool_pprof(runs, tmp_path):
    # GIVEN the pprof profile of a real run
    path, doc, truth = runs["after"]
    profile = tmp_path / "heap.pb.gz"
    report(str(path), "--pprof", str(profile), cwd=runs["dir"])
    row = hoard_row(doc)
    # WHEN the real pprof reads it
    inuse = pprof_top(profile, "inuse_space", tmp_path)
    objects = pprof_top(profile, "alloc_objects", tmp_path)
    # THEN the leaking function has the table's in-use bytes, which are the fixture's (every
    # allocation sampled: exact up to what the allocator was asked for)
    assert inuse["hoard_blocks"] == row["live_bytes"], inuse
    kept = truth["bytes"] + truth["list_buffer"]
    assert abs(inuse["hoard_blocks"] - kept) <= 0.01 * kept, (inuse["hoard_blocks"], kept)
    assert max(inuse, key=inuse.get) == "hoard_blocks"
    assert objects["hoard_blocks"] == row["count"] >= truth["blocks"]
    # the healthy twin holds nothing
    assert inuse.get("churn_blocks", 0) <= 0.01 * kept


# --------------------------------------------------------------------------- diff


def test_diff_of_two_snapshots_of_a_growing_leak(runs):
    (before, before_doc, before_truth), (after, after_doc, after_truth) = runs["before"], runs["after"]
    # WHEN the two snapshots are compared
    result = run_trackleak("diff", str(before), str(after), "--json", "-", cwd=runs["dir"], timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    # THEN the leak comes first with what it grew: the blocks of the rounds in between
    first = doc["sites"][0]
    assert (first["function"], first["line"]) == ("hoard_blocks", line_of(FIXTURE, "hoard"))
    grew = (after_truth["bytes"] + after_truth["list_buffer"]) - (
        before_truth["bytes"] + before_truth["list_buffer"]
    )
    assert abs(first["live_bytes_delta"] - grew) <= 0.01 * grew, (first["live_bytes_delta"], grew)
    assert (
        first["live_bytes_delta"] == hoard_row(after_doc)["live_bytes"] - hoard_row(before_doc)["live_bytes"]
    )
    assert (
        first["count_delta"]
        >= (after_truth["blocks"] - before_truth["blocks"])
        == (ROUNDS_AFTER - ROUNDS_BEFORE) * PER_ROUND
    )
    assert first["status"] == "both"
    churn = next(s for s in doc["sites"] if s["function"] == "churn_blocks")
    assert abs(churn["live_bytes_delta"]) < 0.01 * grew
    # and the table says so, growers first
    table = run_trackleak("diff", str(before), str(after), cwd=runs["dir"], timeout=60)
    assert table.returncode == 0, table.stderr
    body = table.stdout.splitlines()
    assert body[0].split()[:4] == ["FUNCTION", "FILE:LINE", "LIVE", "DELTA"]
    assert body[2].split()[0] == "hoard_blocks" and body[2].split()[2].startswith("+")
    assert re.search(r"\d+ sites, \d+ grew; live bytes \+", table.stderr)
