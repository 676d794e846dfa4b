# SPDX-License-Identifier: MIT
"""`trackleak report --html OUT`: one self-contained HTML page (no network when it is viewed).

Three parts, in this order:

1. **the table**, as the terminal shows it (trackleak.render's columns, the same order:
   ``--sort``, likely leaks first and in red), written as plain HTML;
2. **live bytes over time** of the top sites (the ``history`` series of the document), an SVG
   line chart drawn by the page's script;
3. **a flame graph (icicle) of live bytes by call stack**: the root on top, each frame's callees
   below it, widths proportional to live bytes (trackleak.stacks; a row without stacks is its own
   one-frame path). Clicking a frame focuses it: it takes the whole width, its callees are
   rescaled, its callers stay above it at full width; clicking a caller (or the root) goes back.

The data goes into the page as JSON (``<`` escaped, so no string in it can close the script); the
script and style are inline, about 250 lines of hand-written JS. Tests drive it in Chromium
(tests/integration/test_report_outputs.py); the page marks itself ``data-ready="1"`` on its body
when it has drawn everything, and records script errors in ``window.trackleakErrors``.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Sequence

from .. import render
from ..stacks import Stack
from ..table import Row, is_leak
from .snapshot import Series, Snapshot

CHART_SITES = 8  # series in the chart
MIN_SHARE = 1e-4  # flame graph frames smaller than this share of the root are left out (< 0.1 px)


def flame_tree(stacks: Sequence[Stack], growing: set[tuple] = frozenset()) -> dict[str, Any]:
    """Nested {n: name, f: file, l: line, v: live bytes, t: total bytes, g: growing site, c: [...]}
    with the root "all"; children sorted by live bytes, biggest first."""
    root: dict[str, Any] = {"n": "all", "f": "", "l": 0, "v": 0, "t": 0, "c": {}}
    for stack in stacks:
        if stack.live_bytes <= 0 and stack.total_bytes <= 0:
            continue
        root["v"] += stack.live_bytes
        root["t"] += stack.total_bytes
        node = root
        for frame in stack.frames:
            child = node["c"].get(frame)
            if child is None:
                function, file, line = frame
                child = node["c"][frame] = {
                    "n": function or "?",
                    "f": file,
                    "l": line,
                    "v": 0,
                    "t": 0,
                    "c": {},
                }
            child["v"] += stack.live_bytes
            child["t"] += stack.total_bytes
            node = child
    # The site itself (the last frame of a path) is a growing site: drawn in red.
    for stack in stacks:
        node = root
        for frame in stack.frames:
            node = node["c"].get(frame)
            if node is None:
                break
        if node is not None and stack.frames[-1] in growing:
            node["g"] = 1

    floor = root["v"] * MIN_SHARE
    omitted = 0

    def finish(node: dict[str, Any]) -> dict[str, Any]:
        nonlocal omitted
        kids = sorted(node["c"].values(), key=lambda k: (-k["v"], k["n"]))
        keep = [k for k in kids if k["v"] > floor]
        omitted += sum(1 for k in kids if 0 < k["v"] <= floor)
        out = {k: v for k, v in node.items() if k != "c"}
        if keep:
            out["c"] = [finish(k) for k in keep]
        return out

    tree = finish(root)
    tree["omitted"] = omitted
    return tree


def _series_json(snap: Snapshot, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The chart's series: those of the first CHART_SITES rows (in table order) that have one."""
    by_key: dict[tuple, list[Series]] = {}
    for s in snap.history:
        by_key.setdefault(s.key, []).append(s)
    out = []
    for row in rows:
        for s in by_key.get(row.key, []):
            if len(out) >= CHART_SITES:
                return out
            label = row.function or "?"
            if s.pid is not None and len(by_key[row.key]) > 1:
                label += f" (pid {s.pid})"
            out.append(
                {
                    "name": label,
                    "where": render.location(row, short=True),
                    "growing": bool(is_leak(row)),
                    "points": [[t, v] for t, v in s.points],
                }
            )
    return out


def _table_html(rows: Sequence[Row]) -> str:
    head = "".join(
        f'<th class="{"num" if c in render._RIGHT else "txt"}">{html.escape(c)}</th>' for c in render.COLUMNS
    )
    body = []
    for row in rows:
        cells = render.cells(row, short=True)
        tds = []
        for name, value in zip(render.COLUMNS, cells):
            cls = "num" if name in render._RIGHT else "txt"
            title = f' title="{html.escape(row.file)}"' if name == "FILE:LINE" else ""
            tds.append(f'<td class="{cls}"{title}>{html.escape(value)}</td>')
        cls = ' class="leak"' if is_leak(row) else ""
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    return f'<table id="sites"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _describe(snap: Snapshot, shown: int, total: int) -> str:
    meta = snap.meta
    parts = [f"{total} sites from {len(meta.get('pids') or [])} process(es)"]
    if meta.get("command"):
        parts.append("command: " + " ".join(map(str, meta["command"])))
    if isinstance(meta.get("sample_interval"), int):
        parts.append(f"one sample per {render.human_bytes(meta['sample_interval'])} allocated on average")
    ended = snap.ended
    if ended:
        parts.append("taken " + time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ended)))
    if shown < total:
        parts.append(f"table: top {shown}")
    return "; ".join(parts)


def render_html(snap: Snapshot, rows: Sequence[Row], all_rows: Sequence[Row], *, title: str = "") -> str:
    """The page. ROWS: the table's rows in order (already sorted and cut); ALL_ROWS: every row
    (the flame graph shows them all)."""
    stacks = snap.all_stacks(list(all_rows))
    growing = {(r.function, r.file, r.line) for r in all_rows if is_leak(r)}
    data = {
        "series": _series_json(snap, rows),
        "flame": flame_tree(stacks, growing),
    }
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace("&", "\\u0026")
    title = title or f"TrackLeak report: {snap.path.name}"
    return _PAGE.format(
        title=html.escape(title),
        subtitle=html.escape(_describe(snap, len(rows), len(all_rows))),
        table=_table_html(rows) if rows else '<p class="empty">The table is empty.</p>',
        data=payload,
        style=_STYLE,
        script=_SCRIPT,
    )


def write(path, snap: Snapshot, rows: Sequence[Row], all_rows: Sequence[Row], **kwargs: Any) -> None:
    text = render_html(snap, rows, all_rows, **kwargs)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{title}</h1><p class="sub">{subtitle}</p></header>
<section id="table-section"><h2>Sites <span class="hint">likely leaks first, in red</span></h2>
<div class="scroll">{table}</div></section>
<section id="chart-section"><h2>Live bytes over time <span class="hint">top sites</span></h2>
<svg id="chart" role="img" aria-label="live bytes over time"></svg><div id="legend"></div></section>
<section id="flame-section"><h2>Live bytes by call stack <span class="hint">click a frame to focus it,
a frame above it (or all) to go back</span></h2>
<div id="focus"></div><svg id="flame" role="img" aria-label="flame graph of live bytes"></svg>
<div id="flame-note" class="hint"></div></section>
<script type="application/json" id="trackleak-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
body{font:13px/1.4 system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:0 24px 24px;
  color:#222;background:#fff}
h1{font-size:20px;margin:16px 0 2px}h2{font-size:15px;margin:22px 0 6px}
.sub,.hint{color:#666;font-weight:normal;font-size:12px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font:12px/1.3 "DejaVu Sans Mono",ui-monospace,monospace}
th,td{padding:2px 8px;border-bottom:1px solid #eee;white-space:nowrap}
th{background:#f4f4f4;text-align:left}.num{text-align:right}
tr.leak td{color:#c00;font-weight:bold}
svg{display:block;width:100%}
#chart{height:280px}
#legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin-top:4px;font-size:12px}
#legend .sw{display:inline-block;width:12px;height:3px;margin-right:5px;vertical-align:middle}
.axis{stroke:#999;stroke-width:1}.grid{stroke:#eee;stroke-width:1}
.tick{fill:#666;font-size:11px}
path.series{fill:none;stroke-width:2}
#focus{font-size:12px;margin-bottom:4px;min-height:16px}
#flame rect.frame{stroke:#fff;stroke-width:0.5;cursor:pointer}
#flame rect.frame:hover{stroke:#000}
#flame text{font-size:11px;pointer-events:none;fill:#000}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  window.trackleakErrors = window.trackleakErrors || [];
  window.addEventListener("error", function (e) { window.trackleakErrors.push(String(e.message)); });
  var NS = "http://www.w3.org/2000/svg";
  var DATA = JSON.parse(document.getElementById("trackleak-data").textContent);
  var COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function bytes(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, v = Math.abs(n);
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (n < 0 ? "-" : "") + (i ? v.toFixed(1) : String(Math.round(v))) + " " + u[i];
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }
  function widthOf(svg) { return Math.max(320, svg.getBoundingClientRect().width || 960); }

  // ---- live bytes over time
  function drawChart() {
    var svg = document.getElementById("chart"), legend = document.getElementById("legend");
    clear(svg); clear(legend);
    var series = DATA.series, W = widthOf(svg), H = 280, L = 72, R = 16, T = 10, B = 28;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    if (!series.length) {
      el("text", {x: L, y: H / 2, "class": "tick"}, svg).textContent =
        "No series in this file (a run's --json keeps the live bytes of its top sites over time).";
      return;
    }
    var t0 = Infinity, t1 = -Infinity, y1 = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        t0 = Math.min(t0, p[0]); t1 = Math.max(t1, p[0]); y1 = Math.max(y1, p[1]);
      });
    });
    if (t1 <= t0) { t1 = t0 + 1; }
    if (y1 <= 0) { y1 = 1; }
    var x = function (t) { return L + (t - t0) / (t1 - t0) * (W - L - R); };
    var y = function (v) { return H - B - v / y1 * (H - T - B); };
    for (var i = 0; i <= 4; i++) {
      var v = y1 * i / 4, yy = y(v);
      el("line", {x1: L, x2: W - R, y1: yy, y2: yy, "class": "grid"}, svg);
      el("text", {x: L - 6, y: yy + 4, "text-anchor": "end", "class": "tick"}, svg).textContent = bytes(v);
      var t = t0 + (t1 - t0) * i / 4;
      el("text", {x: x(t), y: H - B + 16, "text-anchor": "middle", "class": "tick"}, svg).textContent =
        t.toFixed(t1 - t0 < 10 ? 1 : 0) + " s";
    }
    el("line", {x1: L, x2: L, y1: T, y2: H - B, "class": "axis"}, svg);
    el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, "class": "axis"}, svg);
    series.forEach(function (s, n) {
      var color = COLORS[n % COLORS.length];
      var d = s.points.map(function (p, k) {
        return (k ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
      });
      var path = el("path", {d: d.join(""), "class": "series", stroke: color, "data-name": s.name}, svg);
      el("title", {}, path).textContent = s.name + " " + s.where;
      s.points.forEach(function (p) {
        var c = el("circle", {cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: color}, svg);
        el("title", {}, c).textContent = s.name + ": " + bytes(p[1]) + " at " + p[0].toFixed(1) + " s";
      });
      var item = document.createElement("span");
      item.className = "item";
      var sw = document.createElement("span");
      sw.className = "sw"; sw.style.background = color;
      item.appendChild(sw);
      var text = s.name + " (" + s.where + ")" + (s.growing ? " \u2014 growing" : "");
      item.appendChild(document.createTextNode(text));
      legend.appendChild(item);
    });
  }

  // ---- flame graph (icicle): root on top
  var ROOT = DATA.flame, FOCUS = ROOT, ROW = 18;
  (function link(node, parent, path) {
    node.parent = parent; node.path = path;
    (node.c || []).forEach(function (k, i) { link(k, node, path + "." + i); });
  })(ROOT, null, "0");

  function depthOf(node) { var d = 0; while (node.parent) { node = node.parent; d++; } return d; }
  function hue(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) { h = (h * 31 + name.charCodeAt(i)) >>> 0; }
    return "hsl(" + (20 + h % 35) + "," + (60 + h % 30) + "%," + (62 + h % 12) + "%)";
  }
  function where(node) { return node.f ? node.f + (node.l ? ":" + node.l : "") : ""; }

  function drawFlame() {
    var svg = document.getElementById("flame");
    clear(svg);
    var W = widthOf(svg), total = ROOT.v || 1;
    var frames = [], maxDepth = 0;
    // Callers of the focused frame: full width, above it.
    var chain = [], n = FOCUS;
    while (n) { chain.unshift(n); n = n.parent; }
    chain.forEach(function (node, d) { frames.push({node: node, x: 0, w: W, d: d}); });
    var base = chain.length - 1;
    (function lay(node, x0, w, d) {
      var x = x0;
      (node.c || []).forEach(function (k) {
        var kw = node.v > 0 ? w * k.v / node.v : 0;
        if (kw >= 0.5) {
          frames.push({node: k, x: x, w: kw, d: d + 1});
          lay(k, x, kw, d + 1);
        }
        x += kw;
      });
    })(FOCUS, 0, W, base);
    frames.forEach(function (f) { maxDepth = Math.max(maxDepth, f.d); });
    var H = (maxDepth + 1) * ROW + 2;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.style.height = H + "px";
    frames.forEach(function (f) {
      var node = f.node;
      var g = el("g", {}, svg);
      var r = el("rect", {
        x: f.x.toFixed(2), y: f.d * ROW, width: Math.max(f.w - 0.5, 0.5).toFixed(2), height: ROW - 1,
        fill: node.g ? "#e0443a" : (node === ROOT ? "#c8c8c8" : hue(node.n)),
        "class": "frame" + (node === FOCUS ? " focused" : ""),
        "data-name": node.n, "data-path": node.path, "data-depth": f.d
      }, g);
      el("title", {}, r).textContent = node.n + (where(node) ? "\n" + where(node) : "") + "\nlive " +
        bytes(node.v) + " (" + (100 * node.v / total).toFixed(1) + " % of all), allocated " + bytes(node.t);
      var chars = Math.floor((f.w - 6) / 6.6);
      if (chars >= 3) {
        var label = node === ROOT ? "all: " + bytes(node.v) + " live" : node.n + " " + bytes(node.v);
        if (label.length > chars) { label = label.slice(0, chars - 1) + "\u2026"; }
        el("text", {x: (f.x + 3).toFixed(2), y: f.d * ROW + 13}, g).textContent = label;
      }
      r.addEventListener("click", function () { FOCUS = node; drawFlame(); });
    });
    var focus = document.getElementById("focus");
    focus.textContent = "Focus: " + chain.map(function (c) { return c.n; }).join(" \u203a ") +
      " \u2014 " + bytes(FOCUS.v) + " live" + (where(FOCUS) ? " at " + where(FOCUS) : "");
    var note = document.getElementById("flame-note");
    if (!ROOT.v) {
      note.textContent = "Nothing is live: every sampled allocation was freed.";
    } else {
      note.textContent = ROOT.omitted ? ROOT.omitted + " frame(s) under 0.01 % of the total left out." : "";
    }
  }

  function drawAll() { drawChart(); drawFlame(); }
  drawAll();
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(drawAll, 100);
  });
  document.body.setAttribute("data-ready", "1");
})();
"""
