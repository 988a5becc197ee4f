#!/usr/bin/env python3
"""Summarise `scripts/bench-peers` results: one table (msg/s medians and ratios vs Volley,
latency of the 1x20 B workload, idle memory per connection), Volley against the best Rust peer
and the raw TCP ceiling per workload, and an SVG bar chart.

Ratios are paired: in every round each stack's msg/s is divided by Volley's msg/s of the same
round (runs seconds apart), and the ratio shown is the median of those per-round ratios. On a
noisy VM this is far steadier than a ratio of medians, because a slow spell of the machine
lowers both runs of a round alike.

Pure Python standard library (no matplotlib).

Usage:
    bench_report.py results.json [--svg OUT.svg] [--markdown]
    bench_report.py --assemble RUNS.jsonl --meta META.json --out results.json [--svg ...] [--markdown]

`results.json` (written by scripts/bench-peers, or by --assemble):
    {
      "version": 1,
      "meta": {...},                      # machine, config, elapsed_s, ...
      "stacks": ["volley", ...],          # display order
      "workloads": ["100x20", ...],       # "<connections>x<bytes>"
      "runs":   [{"kind": "echo", "stack", "workload", "round", "ok", "error", "bench": {...}}],
      "memory": [{"kind": "memory", "stack", "count", "ok", "error", "bench": {...}}],
      "storm":  {"stacks": [...], "clients": N,
                 "runs": [{"kind": "storm", "stack", "round", "count", "ok", "error", "bench": {...}}]}
    }
`bench` is the JSON object `volley bench echo|connections|storm --json` printed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from typing import Any
from xml.sax.saxutils import escape

BASELINE = "volley"

STACK_LABELS = {
    "volley": "Volley",
    "fastwebsockets": "fastwebsockets",
    "tokio-websockets": "tokio-websockets",
    "tungstenite": "tokio-tungstenite",
    "node-ws": "Node ws",
    "python-websockets": "Python websockets",
    "raw-tcp": "raw TCP (ceiling)",
    "volley-sio": "Volley (volley-socketio)",
    "socketioxide": "socketioxide",
    "node-sio": "Node socket.io",
}

STACK_COLOURS = {
    "volley": "#d62728",
    "fastwebsockets": "#1f77b4",
    "tokio-websockets": "#2ca02c",
    "tungstenite": "#9467bd",
    "node-ws": "#8c564b",
    "python-websockets": "#e377c2",
    "raw-tcp": "#7f7f7f",
    "volley-sio": "#d62728",
    "socketioxide": "#1f77b4",
    "node-sio": "#8c564b",
}
EXTRA_COLOURS = ["#17becf", "#bcbd22", "#ff7f0e", "#aec7e8"]


class ReportError(Exception):
    """Bad or inconsistent input."""


def label(stack: str) -> str:
    return STACK_LABELS.get(stack, stack)


def workload_label(w: str) -> str:
    """`100x20` -> `100×20 B`, `10x1024` -> `10×1 KiB`."""
    try:
        conns, size = (int(x) for x in w.split("x", 1))
    except ValueError:
        return w
    if size >= 1024 and size % 1024 == 0:
        return f"{conns}×{size // 1024} KiB"
    return f"{conns}×{size} B"


def _num(obj: Any, *path: str) -> float | None:
    """obj[path[0]][path[1]]... as a float, or None when missing or not a number."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return None
    return float(obj)


def _first(obj: Any, paths: list[tuple[str, ...]]) -> float | None:
    for p in paths:
        v = _num(obj, *p)
        if v is not None:
            return v
    return None


def msg_per_s(bench: dict) -> float | None:
    return _first(bench, [("msg_per_s",), ("messages_per_s",)])


def latency(bench: dict, which: str) -> float | None:
    names = {"p50": ["p50"], "p99": ["p99"], "p999": ["p99_9", "p999"]}[which]
    return _first(bench, [("latency_us", n) for n in names])


def per_connection_bytes(bench: dict) -> float | None:
    return _first(
        bench,
        [
            ("vm_rss_bytes_per_connection",),
            ("per_connection_bytes",),
            ("bytes_per_connection",),
        ],
    )


def anon_per_connection_bytes(bench: dict) -> float | None:
    return _num(bench, "rss_anon_bytes_per_connection")


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


RUST_PEERS = ("fastwebsockets", "tokio-websockets", "tungstenite")
CEILING = "raw-tcp"


def _paired(mine: dict[int, float], base: dict[int, float]) -> list[float]:
    """mine[r] / base[r] for every round r both have, in round order."""
    return [mine[r] / base[r] for r in sorted(mine) if r in base and base[r] > 0]


def _range(xs: list[float]) -> list[float] | None:
    return [min(xs), max(xs)] if xs else None


def summarise(results: dict, baseline: str = BASELINE) -> dict:
    """Medians per (stack, workload), paired ratios vs Volley, Volley against the best Rust peer
    and the raw TCP ceiling, latency, memory; failures listed."""
    stacks = list(results.get("stacks") or [])
    workloads = list(results.get("workloads") or [])
    runs = results.get("runs") or []
    memory = results.get("memory") or []
    if not isinstance(runs, list) or not isinstance(memory, list):
        raise ReportError("'runs' and 'memory' must be lists")
    for r in runs + memory:
        if not isinstance(r, dict) or "stack" not in r:
            raise ReportError(f"malformed entry (no 'stack'): {r!r:.200}")
        if r["stack"] not in stacks:
            stacks.append(r["stack"])
        w = r.get("workload")
        if r.get("kind", "echo") == "echo" and w is not None and w not in workloads:
            workloads.append(w)

    cells: dict[tuple[str, str], dict] = {}
    failures: list[str] = []
    for r in runs:
        key = (r["stack"], r.get("workload"))
        cell = cells.setdefault(
            key,
            {"msg_per_s": [], "by_round": {}, "p50": [], "p99": [], "p999": [], "failed": 0,
             "cpu": [], "cpu_by_round": {}, "gen_cpu": []},
        )
        bench = r.get("bench") if isinstance(r.get("bench"), dict) else {}
        rate = msg_per_s(bench)
        if not r.get("ok") or rate is None:
            cell["failed"] += 1
            failures.append(
                f"{label(r['stack'])} {workload_label(str(key[1]))} round {r.get('round')}: "
                f"{r.get('error') or 'no msg_per_s in the output'}"
            )
            continue
        cell["msg_per_s"].append(rate)
        if isinstance(r.get("round"), int):
            cell["by_round"][r["round"]] = rate
        cpu = bench.get("server_cpu_us_per_msg")
        if isinstance(cpu, (int, float)) and not isinstance(cpu, bool) and cpu > 0:
            cell["cpu"].append(float(cpu))
            if isinstance(r.get("round"), int):
                cell["cpu_by_round"][r["round"]] = float(cpu)
        gen = bench.get("generator_cpu_percent")
        if isinstance(gen, (int, float)) and not isinstance(gen, bool):
            cell["gen_cpu"].append(float(gen))
        for q in ("p50", "p99", "p999"):
            v = latency(bench, q)
            if v is not None:
                cell[q].append(v)

    summary: dict[str, Any] = {"stacks": stacks, "workloads": workloads, "echo": {}, "memory": {}}
    for (stack, w), cell in cells.items():
        summary["echo"].setdefault(stack, {})[w] = {
            "rounds": len(cell["msg_per_s"]),
            "failed_rounds": cell["failed"],
            "msg_per_s_all": cell["msg_per_s"],
            "msg_per_s_median": _median(cell["msg_per_s"]),
            "latency_us_median": {q: _median(cell[q]) for q in ("p50", "p99", "p999")},
            # Server CPU per message (when the generator was given the server's pid).
            "server_cpu_us_median": _median(cell["cpu"]),
            # The load generator's own CPU use, % of one core (≥ 90: it, not the server, may
            # set the rate).
            "generator_cpu_percent_median": _median(cell["gen_cpu"]),
        }
    for (stack, w), cell in cells.items():
        out = summary["echo"][stack][w]
        base_cell = cells.get((baseline, w))
        paired = _paired(cell["by_round"], base_cell["by_round"]) if base_cell else []
        base = summary["echo"].get(baseline, {}).get(w, {}).get("msg_per_s_median")
        mine = out["msg_per_s_median"]
        if paired:
            out["ratio_vs_volley"] = _median(paired)
        else:
            # Rounds without numbers (old results): the ratio of the medians.
            out["ratio_vs_volley"] = mine / base if mine is not None and base else None
        out["ratio_vs_volley_rounds"] = paired
        out["ratio_vs_volley_range"] = _range(paired)
        # The server's CPU per message ÷ Volley's, per round: how many times Volley's CPU
        # this server spends on the same work (> 1: Volley does it with less).
        out["cpu_ratio_vs_volley_rounds"] = (
            _paired(cell["cpu_by_round"], base_cell["cpu_by_round"]) if base_cell else []
        )
    summary["goals"] = {}
    for w in workloads:
        base_cell = cells.get((baseline, w))
        if base_cell is None or not base_cell["by_round"]:
            continue
        entry: dict[str, Any] = {}
        candidates = []
        for peer in RUST_PEERS + (CEILING,):
            cell = cells.get((peer, w))
            if cell is None:
                continue
            # Volley ÷ peer, per round.
            paired = _paired(base_cell["by_round"], cell["by_round"])
            if not paired:
                continue
            view = {"stack": peer, "ratio": _median(paired), "range": _range(paired), "rounds": len(paired)}
            if peer == CEILING:
                entry["raw_tcp"] = view
            else:
                candidates.append(view)
        if candidates:
            # The best peer is the one Volley compares worst against.
            best = min(candidates, key=lambda v: v["ratio"])
            entry["best_rust_peer"] = best
            ceiling = cells.get((CEILING, w))
            paired = _paired(ceiling["by_round"], cells[(best["stack"], w)]["by_round"]) if ceiling else []
            if paired:
                # What no WebSocket stack can beat: the raw TCP echo ÷ that peer.
                entry["raw_tcp_vs_best_rust_peer"] = {
                    "stack": best["stack"], "ratio": _median(paired), "range": _range(paired),
                    "rounds": len(paired),
                }
        if entry:
            summary["goals"][w] = entry
    for m in memory:
        bench = m.get("bench") if isinstance(m.get("bench"), dict) else {}
        per = per_connection_bytes(bench)
        if not m.get("ok") or per is None:
            failures.append(
                f"{label(m['stack'])} idle memory at {m.get('count')} connections: "
                f"{m.get('error') or 'no per_connection_bytes in the output'}"
            )
            per = None
        anon = anon_per_connection_bytes(bench) if per is not None else None
        summary["memory"][m["stack"]] = {
            "count": m.get("count"),
            "per_connection_bytes": per,
            "anon_per_connection_bytes": anon,
        }
    summary["failures"] = failures
    return summary


def _fmt_rate(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _fmt_ratio(v: float | None) -> str:
    return "" if v is None else f" ({v:.2f}×)"


def _fmt_us(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _fmt_bytes(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1024:,.1f} KiB" if abs(v) >= 1024 else f"{v:,.0f} B"


def _rate_cell(cell: dict | None) -> str:
    """A table cell: the median rate with its paired ratio vs Volley, or why there is none."""
    if cell is None:
        return "—"
    if cell["msg_per_s_median"] is None:
        return "FAILED"
    text = _fmt_rate(cell["msg_per_s_median"]) + _fmt_ratio(cell["ratio_vs_volley"])
    if cell["failed_rounds"]:
        text += f" [{cell['failed_rounds']} failed]"
    return text


def _memory_cell(m: dict | None, missing: str) -> str:
    """A table cell: idle memory per connection (anon in parentheses), or `missing`."""
    if m is None:
        return missing
    if m["per_connection_bytes"] is None:
        return "FAILED"
    text = _fmt_bytes(m["per_connection_bytes"])
    if m.get("anon_per_connection_bytes") is not None:
        text += f" ({_fmt_bytes(m['anon_per_connection_bytes'])})"
    return text


def markdown_table(summary: dict) -> str:
    """One table: a row per stack; msg/s medians with the ratio vs Volley per workload."""
    workloads = summary["workloads"]
    latency_w = "1x20" if "1x20" in workloads else None
    head = ["Stack"] + [f"{workload_label(w)} msg/s" for w in workloads]
    if latency_w:
        head.append(f"{workload_label(latency_w)} p50 / p99 µs")
    mem_counts = {m.get("count") for m in summary["memory"].values()}
    if summary["memory"]:
        count = mem_counts.pop() if len(mem_counts) == 1 else None
        head.append(f"idle RSS/conn{f' @ {count:,}' if isinstance(count, int) else ''} (anon)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for stack in summary["stacks"]:
        per_w = summary["echo"].get(stack, {})
        row = [label(stack)]
        row += [_rate_cell(per_w.get(w)) for w in workloads]
        if latency_w:
            lat = per_w.get(latency_w, {}).get("latency_us_median", {})
            row.append(f"{_fmt_us(lat.get('p50'))} / {_fmt_us(lat.get('p99'))}")
        if summary["memory"]:
            row.append(_memory_cell(summary["memory"].get(stack), "n/a" if stack == "raw-tcp" else "—"))
        lines.append("| " + " | ".join(row) + " |")
    out = "\n".join(lines)
    out += (
        "\n\nmsg/s: median over rounds of echoed messages per second; (×) = median over rounds of "
        "the stack's msg/s ÷ Volley's msg/s in the same round."
    )
    if summary["memory"]:
        out += (
            "\nidle RSS/conn: growth of the server's VmRSS (RssAnon in parentheses) per open idle "
            "connection, read from /proc/PID/status; n/a for raw TCP (no WebSocket handshake)."
        )
    goals = goals_table(summary)
    if goals:
        out += "\n\n" + goals
    cpu = echo_cpu_table(summary)
    if cpu:
        out += "\n\n" + cpu
    if summary["failures"]:
        out += "\n\nFAILURES:\n" + "\n".join(f"- {f}" for f in summary["failures"])
    return out


def goals_table(summary: dict) -> str:
    """Volley ÷ the best Rust peer and Volley ÷ raw TCP per workload (median of the per-round
    ratios, with their range); empty without such pairs."""
    rows = []
    for w in summary["workloads"]:
        g = summary.get("goals", {}).get(w)
        if not g:
            continue
        cols = []
        for key in ("best_rust_peer", "raw_tcp", "raw_tcp_vs_best_rust_peer"):
            v = g.get(key)
            if v is None:
                cols.append("—")
                continue
            lo, hi = v["range"]
            name = f"{label(v['stack'])}: " if key == "best_rust_peer" else ""
            if key == "raw_tcp_vs_best_rust_peer":
                name = ""
            cols.append(f"{name}**{v['ratio']:.2f}×** ({lo:.2f}–{hi:.2f}, {v['rounds']} rounds)")
        rows.append(f"| {workload_label(w)} | {cols[0]} | {cols[1]} | {cols[2]} |")
    if not rows:
        return ""
    head = [
        "| Workload | Volley ÷ best Rust peer | Volley ÷ raw TCP | raw TCP ÷ best Rust peer |",
        "|---|---:|---:|---:|",
    ]
    foot = (
        "\nVolley's msg/s ÷ the peer's in the same round: median (min–max) over rounds. The best "
        "Rust peer is the one Volley compares worst against. The last column is the same ratio for "
        "the raw TCP echo, which does no WebSocket work at all: no WebSocket server on the same "
        "system calls can beat that peer by more."
    )
    return "\n".join(head + rows) + "\n" + foot


def echo_cpu_table(summary: dict) -> str:
    """Server CPU per echo (µs, median) per workload and stack, with the paired ratio of the
    stack's CPU to Volley's (> 1: Volley does the same work with less), and the generator's own
    CPU use; empty when no run measured the server's CPU."""
    stacks = [s for s in summary["stacks"] if s in summary["echo"]]
    workloads = [
        w for w in summary["workloads"]
        if any(summary["echo"].get(s, {}).get(w, {}).get("server_cpu_us_median") for s in stacks)
    ]
    if not workloads:
        return ""
    head = ["Workload", "generator CPU"] + [label(s) for s in stacks]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for w in workloads:
        gens = [
            summary["echo"].get(s, {}).get(w, {}).get("generator_cpu_percent_median") for s in stacks
        ]
        gens = [g for g in gens if g is not None]
        row = [workload_label(w), f"{min(gens):.0f}–{max(gens):.0f} %" if gens else "—"]
        for s in stacks:
            cell = summary["echo"].get(s, {}).get(w, {})
            cpu = cell.get("server_cpu_us_median")
            if cpu is None:
                row.append("—")
                continue
            paired = cell.get("cpu_ratio_vs_volley_rounds") or []
            ratio = f" ({_median(paired):.2f}×)" if paired and s != BASELINE else ""
            row.append(f"{cpu:.2f}{ratio}")
        lines.append("| " + " | ".join(row) + " |")
    foot = (
        "\nServer CPU per echo, µs (median over rounds; /proc/PID/task/*/schedstat over the measured "
        "window); (×) = median over rounds of the stack's CPU per echo ÷ Volley's in the same "
        "round: above 1, Volley spends less. Generator CPU: the load generator's own use of its "
        "core (range of the stacks' medians); near 100 % it, not the server, sets msg/s, and "
        "CPU per echo is the comparison that still tells the servers apart."
    )
    return "\n".join(lines) + "\n" + foot


SIO_STACKS = ("volley-sio", "socketioxide", "node-sio")
SIO_BASELINE = "volley-sio"

SIO_WORKLOAD_LABELS = {
    "sio-echo": "100×20 B events/s",
    "sio-ack": "100×20 B acks/s",
    "sio-room": "room of 1,000: deliveries/s",
}

# Issue #16's goals, as paired ratios in one run: (workload, peer, Volley ÷ peer at least).
SIO_GOALS = (
    ("sio-echo", "socketioxide", 1.3),
    ("sio-echo", "node-sio", 2.5),
    ("sio-room", "socketioxide", 1.3),
)
# Idle memory per connected client, at most (bytes).
SIO_MEMORY_GOAL = 4096
# What a message is, per Socket.IO workload (the server CPU column's unit).
SIO_CPU_UNITS = {"sio-echo": "event", "sio-ack": "ack", "sio-room": "delivery"}


def sio_summary(results: dict) -> dict | None:
    """The Socket.IO part of the results (scripts/bench-peers' Socket.IO rows), summarised with
    Volley's Socket.IO server as the baseline; None without such results."""
    sio = results.get("socketio")
    if not isinstance(sio, dict) or not (sio.get("runs") or sio.get("memory")):
        return None
    return summarise(sio, baseline=SIO_BASELINE)


def sio_markdown(summary: dict) -> str:
    """The Socket.IO table: a row per server, rates with the paired ratio vs Volley, idle
    memory per client; then the goals of issue #16, met or missed."""
    workloads = summary["workloads"]
    head = ["Server"] + [SIO_WORKLOAD_LABELS.get(w, w) for w in workloads]
    latency_w = "sio-echo" if "sio-echo" in workloads else None
    if latency_w:
        head.append("events p50 / p99 µs")
    cpu_ws = [w for w in workloads if any(
        summary["echo"].get(s, {}).get(w, {}).get("server_cpu_us_median") is not None
        for s in summary["stacks"])]
    for w in cpu_ws:
        head.append(f"server CPU µs/{SIO_CPU_UNITS.get(w, 'message')}")
    counts = {m.get("count") for m in summary["memory"].values()}
    if summary["memory"]:
        count = counts.pop() if len(counts) == 1 else None
        head.append(f"idle RSS/client{f' @ {count:,}' if isinstance(count, int) else ''} (anon)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for stack in summary["stacks"]:
        per_w = summary["echo"].get(stack, {})
        row = [label(stack)]
        row += [_rate_cell(per_w.get(w)) for w in workloads]
        if latency_w:
            lat = per_w.get(latency_w, {}).get("latency_us_median", {})
            row.append(f"{_fmt_us(lat.get('p50'))} / {_fmt_us(lat.get('p99'))}")
        for w in cpu_ws:
            cell = per_w.get(w, {})
            cpu = cell.get("server_cpu_us_median")
            paired = cell.get("cpu_ratio_vs_volley_rounds") or []
            row.append("—" if cpu is None else f"{cpu:.3g}" + _fmt_ratio(_median(paired)))
        if summary["memory"]:
            row.append(_memory_cell(summary["memory"].get(stack), "—"))
        lines.append("| " + " | ".join(row) + " |")
    out = "\n".join(lines)
    out += (
        "\n\nRates: median over rounds; (×) = median over rounds of the server's rate ÷ Volley's "
        "in the same round. Every server single-threaded on core 0, the generator "
        "(`volley bench socketio`) on core 1. idle RSS/client: growth of the server's VmRSS "
        "(RssAnon) per connected idle client (WebSocket, joined `/`, default heartbeat). "
        "server CPU: the server's CPU time over the measured window ÷ messages (median over "
        "rounds; (×) = median of the server's CPU per message ÷ Volley's in the same round, "
        "> 1 when Volley spends less): it compares the servers' work even when the one-core "
        "generator, not the server, limits the rate."
    )
    goals = sio_goals(summary)
    if goals:
        out += "\n\n" + goals
    if summary["failures"]:
        out += "\n\nFAILURES:\n" + "\n".join(f"- {f}" for f in summary["failures"])
    return out


def sio_goal_rows(summary: dict) -> list[dict]:
    """Each goal of issue #16 with its measured value: Volley ÷ peer (median of the per-round
    ratios, their range) or Volley's memory per client; `met` is None when not measured."""
    rows = []
    for w, peer, want in SIO_GOALS:
        base = summary["echo"].get(SIO_BASELINE, {}).get(w)
        mine = summary["echo"].get(peer, {}).get(w)
        paired = []
        if base and mine:
            # Volley ÷ peer per round: the inverse of the peer's ratio vs Volley.
            paired = [1 / r for r in mine.get("ratio_vs_volley_rounds") or [] if r > 0]
        ratio = _median(paired)
        rows.append({
            "workload": w, "peer": peer, "goal": want, "ratio": ratio,
            "range": _range(paired), "rounds": len(paired),
            "met": None if ratio is None else ratio >= want,
        })
        # The same goal in server CPU per message (the peer's ÷ Volley's), when measured.
        cpu = (mine or {}).get("cpu_ratio_vs_volley_rounds") or [] if base else []
        if cpu:
            ratio = _median(cpu)
            rows.append({
                "workload": w, "peer": peer, "goal": want, "ratio": ratio, "cpu": True,
                "range": _range(cpu), "rounds": len(cpu), "met": ratio >= want,
            })
    m = summary["memory"].get(SIO_BASELINE)
    per = m.get("per_connection_bytes") if m else None
    rows.append({
        "workload": "sio-idle", "peer": None, "goal": SIO_MEMORY_GOAL, "bytes": per,
        "count": m.get("count") if m else None,
        "met": None if per is None else per <= SIO_MEMORY_GOAL,
    })
    return rows


def sio_goals(summary: dict) -> str:
    rows = []
    for g in sio_goal_rows(summary):
        verdict = {None: "not measured", True: "**met**", False: "**missed**"}[g["met"]]
        if g["peer"] is None:
            value = "—" if g["bytes"] is None else _fmt_bytes(g["bytes"])
            goal = f"idle memory per client ≤ {_fmt_bytes(g['goal'])}"
            if g["met"] is False:
                verdict += f" by {_fmt_bytes(g['bytes'] - g['goal'])}"
        else:
            goal = f"{SIO_WORKLOAD_LABELS.get(g['workload'], g['workload'])}: Volley ≥ {g['goal']}× {label(g['peer'])}"
            if g.get("cpu"):
                goal += ", in server CPU per message"
            if g["ratio"] is None:
                value = "—"
            else:
                lo, hi = g["range"]
                value = f"{g['ratio']:.2f}× ({lo:.2f}–{hi:.2f}, {g['rounds']} rounds)"
                if g["met"] is False:
                    verdict += f" by {g['goal'] - g['ratio']:.2f}×"
        rows.append(f"| {goal} | {value} | {verdict} |")
    head = ["| Goal (issue #16) | Measured | |", "|---|---:|---|"]
    return "\n".join(head + rows)


# The reconnect storm (issue #15): `volley bench storm --json` per stack and round.
STORM_BASELINE = "volley"
# Issue #15's goals for the storm: Volley ÷ the best Rust peer in the same run, handshakes/s
# against the figure the issue measured, p99 connect time, failures.
STORM_GOAL_VS_BEST_PEER = 1.5
STORM_ISSUE_RATE = 9100.0
STORM_GOAL_VS_ISSUE = 2.0
STORM_GOAL_P99_MS = 100.0
STORM_FAILURE_KINDS = ("refused", "reset", "timeout", "bad_handshake", "bad_echo", "other")


def storm_summary(results: dict) -> dict | None:
    """The reconnect-storm rows: per stack, handshakes/s (median over rounds, paired ratio vs
    Volley), median p99 connect times (to the 101, to the echo), failures by kind summed over
    rounds; Volley ÷ the best Rust peer; issue #15's goals. None without storm results."""
    storm = results.get("storm")
    if not isinstance(storm, dict) or not storm.get("runs"):
        return None
    runs = storm["runs"]
    if not isinstance(runs, list):
        raise ReportError("'storm.runs' must be a list")
    stacks = [s for s in (storm.get("stacks") or []) if s != CEILING]
    rows: dict[str, dict] = {}
    failures: list[str] = []
    for r in runs:
        if not isinstance(r, dict) or "stack" not in r:
            raise ReportError(f"malformed storm entry (no 'stack'): {r!r:.200}")
        stack = r["stack"]
        if stack not in stacks:
            stacks.append(stack)
        row = rows.setdefault(stack, {
            "by_round": {}, "p99_101": [], "p99_echo": [], "failed_rounds": 0,
            "failures": {k: 0 for k in STORM_FAILURE_KINDS}, "clients": 0, "closed_before_end": 0,
        })
        bench = r.get("bench") if isinstance(r.get("bench"), dict) else {}
        rate = _num(bench, "handshakes_per_s")
        if not r.get("ok") or rate is None:
            row["failed_rounds"] += 1
            failures.append(
                f"{label(stack)} storm round {r.get('round')}: "
                f"{r.get('error') or 'no handshakes_per_s in the output'}"
            )
            continue
        row["by_round"][r.get("round", len(row["by_round"]) + 1)] = rate
        for key, path in (("p99_101", ("handshake_ms", "p99")), ("p99_echo", ("echo_ms", "p99"))):
            v = _num(bench, *path)
            if v is not None:
                row[key].append(v)
        for k in STORM_FAILURE_KINDS:
            row["failures"][k] += int(_num(bench, "failures", k) or 0)
        row["clients"] += int(_num(bench, "count") or 0)
        row["closed_before_end"] += int(_num(bench, "closed_before_end") or 0)
    base = rows.get(STORM_BASELINE, {}).get("by_round", {})
    out: dict[str, Any] = {"stacks": stacks, "rows": {}, "failures": failures}
    for stack, row in rows.items():
        rates = list(row["by_round"].values())
        paired = _paired(row["by_round"], base)
        out["rows"][stack] = {
            "rounds": len(rates),
            "failed_rounds": row["failed_rounds"],
            "handshakes_per_s_all": rates,
            "handshakes_per_s_median": _median(rates),
            "ratio_vs_volley": _median(paired),
            "ratio_vs_volley_range": _range(paired),
            "p99_101_ms_median": _median(row["p99_101"]),
            "p99_echo_ms_median": _median(row["p99_echo"]),
            "p99_101_ms_max": max(row["p99_101"]) if row["p99_101"] else None,
            "p99_echo_ms_max": max(row["p99_echo"]) if row["p99_echo"] else None,
            "failures": row["failures"],
            "failed_connections": sum(row["failures"].values()),
            "clients": row["clients"],
            "closed_before_end": row["closed_before_end"],
        }
    candidates = []
    for peer in RUST_PEERS:
        if peer not in rows or not base:
            continue
        paired = _paired(base, rows[peer]["by_round"])
        if paired:
            candidates.append({"stack": peer, "ratio": _median(paired), "range": _range(paired),
                               "rounds": len(paired)})
    out["best_rust_peer"] = min(candidates, key=lambda v: v["ratio"]) if candidates else None
    out["goals"] = storm_goal_rows(out)
    return out


def storm_goal_rows(summary: dict) -> list[dict]:
    """Issue #15's storm goals with Volley's measured values; `met` is None when not measured."""
    v = summary["rows"].get(STORM_BASELINE)
    best = summary.get("best_rust_peer")
    rate = v["handshakes_per_s_median"] if v else None
    rows = [
        {"goal": "zero failures",
         "value": None if v is None or not v["rounds"] else v["failed_connections"],
         "met": None if v is None or not v["rounds"] else v["failed_connections"] == 0},
        {"goal": f"p99 connect → 101 < {STORM_GOAL_P99_MS:.0f} ms", "value": v and v["p99_101_ms_median"],
         "met": None if not v or v["p99_101_ms_median"] is None
         else v["p99_101_ms_median"] < STORM_GOAL_P99_MS},
        {"goal": f"p99 connect → echo < {STORM_GOAL_P99_MS:.0f} ms", "value": v and v["p99_echo_ms_median"],
         "met": None if not v or v["p99_echo_ms_median"] is None
         else v["p99_echo_ms_median"] < STORM_GOAL_P99_MS},
        {"goal": f"handshakes/s ≥ {STORM_GOAL_VS_ISSUE:g}× the issue's {STORM_ISSUE_RATE:,.0f}",
         "value": rate,
         "met": None if rate is None else rate >= STORM_GOAL_VS_ISSUE * STORM_ISSUE_RATE},
        {"goal": f"handshakes/s ≥ {STORM_GOAL_VS_BEST_PEER:g}× the best Rust peer (paired)",
         "value": best and best["ratio"],
         "met": None if not best else best["ratio"] >= STORM_GOAL_VS_BEST_PEER},
    ]
    return rows


def _fmt_ms(v: float | None) -> str:
    return "—" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def storm_markdown(summary: dict) -> str:
    """The storm table (a row per stack) and Volley against the goals of issue #15."""
    head = ["Stack", "handshakes/s", "p99 connect → 101 ms", "p99 connect → echo ms",
            "failed connections (refused / reset / timeout / bad handshake / bad echo / other)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---|"]
    for stack in summary["stacks"]:
        row = summary["rows"].get(stack)
        if row is None:
            continue
        if row["handshakes_per_s_median"] is None:
            rate = "FAILED"
        else:
            rate = _fmt_rate(row["handshakes_per_s_median"]) + _fmt_ratio(row["ratio_vs_volley"])
            if row["failed_rounds"]:
                rate += f" [{row['failed_rounds']} failed]"
        f = row["failures"]
        kinds = " / ".join(str(f[k]) for k in STORM_FAILURE_KINDS)
        lines.append(
            f"| {label(stack)} | {rate} | {_fmt_ms(row['p99_101_ms_median'])} | "
            f"{_fmt_ms(row['p99_echo_ms_median'])} | {row['failed_connections']:,} of "
            f"{row['clients']:,} ({kinds}) |"
        )
    out = "\n".join(lines)
    out += (
        "\n\nhandshakes/s and p99: medians over rounds; (×) = median over rounds of the stack's "
        "handshakes/s ÷ Volley's in the same round. Failed connections: summed over rounds."
    )
    best = summary.get("best_rust_peer")
    if best:
        lo, hi = best["range"]
        out += (
            f"\n\nVolley ÷ best Rust peer ({label(best['stack'])}): **{best['ratio']:.2f}×** "
            f"({lo:.2f}–{hi:.2f}, {best['rounds']} rounds)"
        )
    rows = []
    for g in summary["goals"]:
        verdict = {None: "not measured", True: "**met**", False: "**missed**"}[g["met"]]
        value = g["value"]
        if value is None:
            text = "—"
        elif "×" in g["goal"] and "best" in g["goal"]:
            text = f"{value:.2f}×"
        elif "ms" in g["goal"]:
            text = f"{value:.1f} ms"
        elif "handshakes/s" in g["goal"]:
            text = f"{value:,.0f}/s ({value / STORM_ISSUE_RATE:.2f}×)"
        else:
            text = f"{value:,}"
        rows.append(f"| {g['goal']} | {text} | {verdict} |")
    out += "\n\n" + "\n".join(["| Goal (issue #15, storm) | Volley | |", "|---|---:|---|"] + rows)
    if summary["failures"]:
        out += "\n\nFAILURES:\n" + "\n".join(f"- {f}" for f in summary["failures"])
    return out


def svg_chart(summary: dict, title: str = "") -> str:
    """Grouped bars: msg/s per workload per stack, normalised to Volley's median (= 1.0) in each
    workload (the workloads differ by orders of magnitude); every bar is labelled with its ratio,
    and each group with Volley's absolute msg/s. Without a Volley result in a workload, that
    workload is normalised to its fastest stack."""
    workloads = summary["workloads"]
    stacks = [s for s in summary["stacks"] if s in summary["echo"]]
    if not workloads or not stacks:
        raise ReportError("nothing to plot: no echo results")
    colours = {}
    extra = iter(EXTRA_COLOURS * 4)
    for s in stacks:
        colours[s] = STACK_COLOURS.get(s) or next(extra)

    groups = []
    vmax = 0.0
    for w in workloads:
        rates = {s: summary["echo"].get(s, {}).get(w, {}).get("msg_per_s_median") for s in stacks}
        base = rates.get(BASELINE)
        base_name = "Volley"
        if not base:
            known = [v for v in rates.values() if v]
            base = max(known) if known else None
            base_name = "fastest"
        norm = {s: (v / base if v is not None and base else None) for s, v in rates.items()}
        if base_name == "Volley":
            # The paired per-round ratios, as in the table.
            for s in stacks:
                ratio = summary["echo"].get(s, {}).get(w, {}).get("ratio_vs_volley")
                if ratio is not None:
                    norm[s] = ratio
        vmax = max([vmax] + [v for v in norm.values() if v is not None])
        groups.append((w, rates, norm, base, base_name))
    ymax = max(1.2, math.ceil(vmax * 1.15 * 4) / 4)

    bar_w, gap, pad_l, pad_r, pad_t, pad_b = 16, 28, 64, 20, 56, 86
    group_w = len(stacks) * bar_w
    plot_w = len(workloads) * group_w + (len(workloads) + 1) * gap
    plot_h = 300
    legend_h = 18 * math.ceil(len(stacks) / 4) + 8
    width = pad_l + plot_w + pad_r
    height = pad_t + plot_h + pad_b + legend_h

    def y(v: float) -> float:
        return pad_t + plot_h - v / ymax * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">'
        f"{escape(title or 'Echo throughput per workload, relative to Volley (= 1.0)')}</text>",
        f'<text x="{width / 2}" y="38" text-anchor="middle" fill="#555">'
        "bars: median over rounds of msg/s ÷ Volley's msg/s in the same round; "
        "server on one core, load generator on the other</text>",
    ]
    step = 0.25 if ymax <= 2 else (0.5 if ymax <= 4 else max(1.0, round(ymax / 8)))
    t = 0.0
    while t <= ymax + 1e-9:
        yy = y(t)
        out.append(f'<line x1="{pad_l}" y1="{yy:.1f}" x2="{pad_l + plot_w}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{pad_l - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#444">{t:.2f}×</text>')
        t += step
    out.append(
        f'<line x1="{pad_l}" y1="{y(1.0):.1f}" x2="{pad_l + plot_w}" y2="{y(1.0):.1f}" '
        'stroke="#d62728" stroke-dasharray="4 3"/>'
    )
    out.append(
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#333"/>'
    )
    for gi, (w, rates, norm, base, base_name) in enumerate(groups):
        gx = pad_l + gap + gi * (group_w + gap)
        for si, s in enumerate(stacks):
            v = norm.get(s)
            x = gx + si * bar_w
            if v is None:
                out.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{pad_t + plot_h - 4}" text-anchor="middle" '
                    f'fill="#999" font-size="9">n/a</text>'
                )
                continue
            top = y(min(v, ymax))
            h = pad_t + plot_h - top
            rate = rates.get(s)
            out.append(
                f'<rect x="{x + 1}" y="{top:.1f}" width="{bar_w - 2}" height="{h:.1f}" fill="{colours[s]}">'
                f"<title>{escape(label(s))}, {escape(workload_label(w))}: {_fmt_rate(rate)} msg/s "
                f"({v:.2f}× {base_name})</title></rect>"
            )
            lx, ly = x + bar_w / 2 + 3, top - 3
            out.append(
                f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="9" fill="#333" '
                f'transform="rotate(-90 {lx:.1f} {ly:.1f})">{v:.2f}</text>'
            )
        cx = gx + group_w / 2
        out.append(
            f'<text x="{cx:.1f}" y="{pad_t + plot_h + 18}" text-anchor="middle" font-weight="bold">'
            f"{escape(workload_label(w))}</text>"
        )
        out.append(
            f'<text x="{cx:.1f}" y="{pad_t + plot_h + 33}" text-anchor="middle" fill="#555" font-size="10">'
            f"{base_name} = {_fmt_rate(base)} msg/s</text>"
        )
    ly0 = pad_t + plot_h + pad_b - 20
    for i, s in enumerate(stacks):
        lx = pad_l + (i % 4) * ((plot_w) / 4)
        ly = ly0 + (i // 4) * 18
        out.append(f'<rect x="{lx:.1f}" y="{ly}" width="12" height="12" fill="{colours[s]}"/>')
        out.append(f'<text x="{lx + 17:.1f}" y="{ly + 10}">{escape(label(s))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def assemble(runs_path: str, meta_path: str | None) -> dict:
    """Builds a results.json object from the JSON-lines file scripts/bench-peers appends to."""
    meta: dict = {}
    if meta_path:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ReportError(f"{meta_path}: expected a JSON object")
    runs, memory, sio_runs, sio_memory, storm_runs = [], [], [], [], []
    with open(runs_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReportError(f"{runs_path}:{n}: not JSON: {e}") from None
            if not isinstance(entry, dict) or "stack" not in entry:
                raise ReportError(f"{runs_path}:{n}: expected an object with a 'stack'")
            kind = entry.get("kind")
            if kind == "memory":
                memory.append(entry)
            elif kind == "sio":
                sio_runs.append(entry)
            elif kind == "sio-memory":
                sio_memory.append(entry)
            elif kind == "storm":
                storm_runs.append(entry)
            else:
                runs.append(entry)
    return {
        "version": 1,
        "meta": meta,
        "stacks": [s for s in meta.get("stacks", []) if s not in SIO_STACKS],
        "workloads": meta.get("workloads", []),
        "runs": runs,
        "memory": memory,
        "storm": {
            "stacks": [s for s in meta.get("stacks", []) if s not in SIO_STACKS and s != CEILING],
            "clients": meta.get("storm_clients"),
            "runs": storm_runs,
        },
        "socketio": {
            "stacks": [s for s in meta.get("stacks", []) if s in SIO_STACKS],
            "workloads": meta.get("sio_workloads", []),
            "runs": sio_runs,
            "memory": sio_memory,
        },
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", help="results.json written by scripts/bench-peers")
    p.add_argument("--assemble", metavar="RUNS.jsonl", help="build results from bench-peers' JSON lines")
    p.add_argument("--meta", metavar="META.json", help="with --assemble: run metadata")
    p.add_argument("--out", metavar="results.json", help="with --assemble: where to write the results")
    p.add_argument("--svg", metavar="OUT.svg", help="write the bar chart")
    p.add_argument("--markdown", action="store_true", help="print the table (Markdown)")
    p.add_argument("--title", default="", help="chart title")
    args = p.parse_args(argv)
    try:
        if args.assemble:
            results = assemble(args.assemble, args.meta)
            if args.out:
                with open(args.out, "w", encoding="utf-8") as f:
                    json.dump(results, f, indent=1)
                    f.write("\n")
        elif args.results:
            with open(args.results, encoding="utf-8") as f:
                results = json.load(f)
            if not isinstance(results, dict):
                raise ReportError(f"{args.results}: expected a JSON object")
        else:
            p.error("give results.json or --assemble RUNS.jsonl")
        summary = summarise(results)
        sio = sio_summary(results)
        storm = storm_summary(results)
        if not summary["stacks"] and sio is None and storm is None:
            raise ReportError("no results")
        if args.svg and summary["echo"]:
            with open(args.svg, "w", encoding="utf-8") as f:
                f.write(svg_chart(summary, args.title))
        if args.markdown:
            if summary["echo"] or summary["memory"]:
                print(markdown_table(summary))
            if storm is not None:
                if summary["echo"] or summary["memory"]:
                    print()
                clients = (results.get("storm") or {}).get("clients")
                count = f" of {clients:,} clients" if isinstance(clients, int) else ""
                print(f"Reconnect storm{count} (volley bench storm):\n")
                print(storm_markdown(storm))
            if sio is not None:
                if summary["echo"] or summary["memory"]:
                    print()
                print("Socket.IO (WebSocket transport):\n")
                print(sio_markdown(sio))
    except (OSError, json.JSONDecodeError, ReportError) as e:
        print(f"bench_report: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
