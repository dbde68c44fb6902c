"""Figures → statistics, targets and the Markdown table printed by ``bench/run.py``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.harness import percentile

ENGINES = ("superpose", "ray", "dask", "processpool", "nats")
STATUS_TEXT = {"not installed": "not installed", "n/a": "n/a", "skipped": "—"}


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    label: str
    unit: str
    better: str = "lower"
    target: tuple[str, float] | None = None
    """(``"<="`` or ``">="``, value) from the issue, judged on superpose's median."""
    scale: float = 1.0
    vs_ray: float | None = None
    """A target as a ratio to Ray's median in the same run (issue 16: 50 MB ≤ 1.5× Ray)."""


METRICS = (
    Metric("cold", "start_s", "1 cold start → first no-op result", "s"),
    Metric("cold", "shutdown_s", "1 shutdown", "s"),
    Metric("latency", "p50_ms", "2 warm no-op call p50", "ms", target=("<=", 1.0)),
    Metric("latency", "p99_ms", "2 warm no-op call p99", "ms"),
    Metric(
        "throughput",
        "tasks_per_s",
        "3 no-op throughput",
        "tasks/s",
        "higher",
        target=(">=", 5000.0),
    ),
    Metric("fanout", "wall_s", "4 fan-out 5 ms sleeps", "s"),
    Metric("fanout", "efficiency", "4 fan-out efficiency (ideal/actual)", "%", "higher", scale=100),
    Metric("cpu", "wall_s", "5 CPU tasks of ~20 ms (calibrated)", "s"),
    Metric("cpu", "efficiency", "5 CPU efficiency (ideal/actual)", "%", "higher", scale=100),
    Metric("data", "in_s", "6 big bytes argument in", "s", vs_ray=1.5),
    Metric("data", "out_s", "6 big bytes result out", "s", vs_ray=1.5),
    Metric("data", "roundtrip_big_s", "6 bigger round trip", "s"),
    Metric("nested", "wall_s", "7 nested mergesort", "s"),
    Metric("up", "ready_s", "8 `superpose up --detach` → ready", "s", target=("<=", 3.0)),
    Metric("up", "down_s", "8 `superpose down`", "s"),
    Metric("bundle", "deploy_s", "8 deploy a new 10-module app (API)", "s"),
    Metric(
        "bundle",
        "first_call_ms",
        "8 cold first call, never-seen bundle (idle lattice)",
        "ms",
        target=("<=", 100.0),
    ),
    Metric("bundle", "right_after_up_ms", "8 same, the moment `up` returned", "ms"),
    Metric("bundle", "warm_call_ms", "8 next calls of that bundle (p50)", "ms"),
    Metric("update", "cli_deploy_s", "8 `superpose deploy` new version (CLI)", "s"),
    Metric("update", "visible_s", "8 deploy start → call answers new version", "s"),
    Metric(
        "alias",
        "visible_ms",
        "8 alias move → visible in another process",
        "ms",
        target=("<=", 100.0),
    ),
    Metric("alias", "move_ms", "8 alias move itself (KV read + put)", "ms"),
    Metric("affinity", "cold_loads_on", "8 20 bundles, 2 nodes: cold loads, warm affinity", "n"),
    Metric("affinity", "cold_loads_off", "8 same, random placement", "n"),
    Metric("affinity", "ratio", "8 cold loads affinity / random", "x", target=("<=", 1.0)),
    Metric("environments", "resolve_s", "9 resolve numpy with uv", "s"),
    Metric("environments", "build_call_s", "9 first numpy call: build + upload", "s"),
    Metric(
        "environments",
        "pull_call_s",
        "9 first numpy call on the 2nd node: pull",
        "s",
        target=("<=", 3.0),
    ),
    Metric("environments", "warm_call_ms", "9 warm numpy call", "ms"),
    Metric("environments", "archive_mb", "9 numpy environment archive", "MB"),
    Metric("environments", "ray_first_s", "9 Ray's first runtime_env pip task", "s"),
    Metric("memo", "work_first_s", "10 1,000-task cached dataflow (5 ms leaves), first run", "s"),
    Metric("memo", "work_rerun_s", "10 the same, memoized rerun", "s"),
    Metric("memo", "work_ratio", "10 first / memoized rerun", "x", "higher", (">=", 50.0)),
    Metric("memo", "map_ratio", "10 a 1,000-item cached map: first / rerun", "x", "higher"),
    Metric("memo", "noop_ratio", "10 the same with no-op tasks", "x", "higher"),
)


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "p10": percentile(values, 10),
        "p90": percentile(values, 90),
        "n": len(values),
    }


def metric_values(cell: dict[str, Any], key: str) -> list[float]:
    """One value per completed repeat; a repeat that overran its budget counts only for rates."""
    out = []
    for rep in cell.get("repeats", []):
        value = rep.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if rep.get("timed_out") and key != "tasks_per_s":
            continue
        out.append(float(value))
    return out


def add_summaries(results: dict[str, dict[str, Any]]) -> None:
    """Attach ``summary`` (per metric statistics) to every finished cell, in place."""
    for cells in results.values():
        for cell in cells.values():
            if cell.get("status") != "ok":
                continue
            keys = {k for rep in cell.get("repeats", []) for k in rep}
            cell["summary"] = {
                k: summarize(v)
                for k in sorted(keys)
                if (v := metric_values(cell, k)) and k != "timed_out"
            }
            cell["timed_out"] = any(rep.get("timed_out") for rep in cell.get("repeats", []))


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell_text(cell: dict[str, Any] | None, metric: Metric) -> str:
    if cell is None:
        return "—"
    status = str(cell.get("status", ""))
    if status in STATUS_TEXT:
        return STATUS_TEXT[status]
    if status != "ok":
        return status  # error / timeout
    stats = cell.get("summary", {}).get(metric.key)
    errors = [
        r[f"{metric.key}_error"] for r in cell.get("repeats", []) if f"{metric.key}_error" in r
    ]
    if stats is None and errors:
        return f"error: {errors[0][:80]}"
    if stats is None:
        return f"✗ not finished: {_partial(cell)}" if cell.get("timed_out") else "—"
    s = metric.scale
    text = _fmt(stats["median"] * s)
    if stats["n"] > 1:
        text += f" ({_fmt(stats['min'] * s)}–{_fmt(stats['max'] * s)})"
    if cell.get("timed_out"):
        text += f" ⚠ partial: {_partial(cell)}"
    return text


def _partial(cell: dict[str, Any]) -> str:
    for rep in cell.get("repeats", []):
        if rep.get("timed_out"):
            why = f" ({rep['stopped']})" if rep.get("stopped") else ""
            done = f"{rep.get('finished', 0)}/{rep.get('tasks', '?')}"
            return f"{done} in {rep['wall_s']:.0f} s{why}"
    return "?"


def median_of(results: dict[str, Any], engine: str, metric: Metric) -> float | None:
    cell = results.get(engine, {}).get(metric.workload)
    if not cell or cell.get("status") != "ok":
        return None
    stats = cell.get("summary", {}).get(metric.key)
    return None if stats is None else float(stats["median"])


def ratio_text(results: dict[str, Any], other: str, metric: Metric) -> str:
    mine, theirs = median_of(results, "superpose", metric), median_of(results, other, metric)
    if mine is None or theirs is None or theirs == 0:
        return "—"
    return f"{mine / theirs:.2f}×"


def verdict(results: dict[str, Any], metric: Metric) -> str:
    if metric.vs_ray is not None:
        return ray_verdict(results, metric, metric.vs_ray)
    if metric.target is None:
        return ""
    op, goal = metric.target
    unit = metric.unit
    value = median_of(results, "superpose", metric)
    cell = results.get("superpose", {}).get(metric.workload) or {}
    if value is None:
        return f"{op} {goal:g} {unit}: MISS (no result)"
    ok = value <= goal if op == "<=" else value >= goal
    if cell.get("timed_out"):
        ok = False
    return f"{op} {goal:g} {unit}: {'PASS' if ok else 'MISS'}"


def ray_verdict(results: dict[str, Any], metric: Metric, most: float) -> str:
    """``<= 1.5× Ray: PASS (1.21×)``, judged on the medians of one run."""
    mine, theirs = median_of(results, "superpose", metric), median_of(results, "ray", metric)
    if mine is None or theirs is None or theirs == 0:
        return f"<= {most:g}× Ray: no figure (run with --engines superpose,ray)"
    ratio = mine / theirs
    return f"<= {most:g}× Ray: {'PASS' if ratio <= most else 'MISS'} ({ratio:.2f}×)"


def markdown_table(results: dict[str, Any], engines: list[str]) -> str:
    head = [
        "workload · metric",
        "unit",
        *engines,
        "superpose/Ray",
        "superpose/Dask",
        "target (superpose)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric in METRICS:
        if not any(metric.workload in results.get(e, {}) for e in engines):
            continue
        arrow = "↓" if metric.better == "lower" else "↑"
        row = [f"{metric.label} {arrow}", metric.unit]
        row += [cell_text(results.get(e, {}).get(metric.workload), metric) for e in engines]
        row += [
            ratio_text(results, "ray", metric),
            ratio_text(results, "dask", metric),
            verdict(results, metric),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def failures(results: dict[str, Any]) -> list[str]:
    out = []
    for engine, cells in results.items():
        for workload, cell in cells.items():
            for rep in cell.get("repeats", []):
                out += [
                    f"- {engine}/{workload}: {k[:-6]}: {v}"
                    for k, v in rep.items()
                    if k.endswith("_error")
                ]
            if cell.get("status") in ("error", "timeout"):
                out.append(
                    f"- {engine}/{workload}: {cell.get('status')}: "
                    f"{str(cell.get('error', '')).splitlines()[0][:300]}"
                )
    return out
