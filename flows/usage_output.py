"""How a usage report is shown: terminal table, CSV, artifact rows and markdown.

Pure functions of the report dict that flows.usage_compute.compute returns.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from flows.usage_compute import GROUPS


def artifact_key(report: dict[str, Any]) -> str:
    """mloc-usage-<start>-<end>[-<user>][-<project>]: Prefect keys allow lowercase, digits and dashes."""
    query = report["query_parameters"]
    parts = ["mloc-usage", query["start_date"], query["end_date"]]
    parts += [query[name] for name in ("user", "project") if name in query]
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def rows(report: dict[str, Any], group_by: str) -> list[dict[str, Any]]:
    """One row per key of the chosen breakdown; with a rate card, GPU rows carry their cost."""
    cost = report["cost"]["by_gpu"] if group_by == "gpu" and "cost" in report else None
    out = []
    for key, hours in report[f"breakdown_by_{group_by}"].items():
        row: dict[str, Any] = {group_by: key, "gpu_hours": hours}
        if cost is not None:
            row["cost"] = cost[key]
            row["currency"] = report["cost"]["currency"]
        out.append(row)
    return out


def _title(report: dict[str, Any]) -> tuple[str, str]:
    query = report["query_parameters"]
    scope = ", ".join(f"{k} {query[k]}" for k in ("user", "project") if k in query) or "all users and projects"
    return f"GPU usage {query['start_date']} to {query['end_date']} (UTC), {scope}", (
        f"{report['total_gpu_hours']:g} GPU-hours, {report['total_tasks_completed']} task(s) completed"
        + (f", cost {report['cost']['total']:.2f} {report['cost']['currency']}" if "cost" in report else "")
    )


def table(report: dict[str, Any]) -> str:
    """The terminal view: totals, then one block per breakdown."""
    title, totals = _title(report)
    lines = [title, totals]
    for group in GROUPS:
        table_rows = rows(report, group)
        if not table_rows:
            continue
        width = max(len(group), *(len(row[group]) for row in table_rows))
        costs = "cost" in table_rows[0]
        cost_title = f"cost ({report['cost']['currency']})" if costs else ""
        lines += ["", f"{group:{width}}  {'GPU-hours':>12}" + (f"  {cost_title:>12}" if costs else "")]
        lines += [
            f"{row[group]:{width}}  {row['gpu_hours']:12.2f}" + (f"  {row['cost']:12.2f}" if costs else "")
            for row in table_rows
        ]
    return "\n".join(lines)


def csv_text(report: dict[str, Any]) -> str:
    """gpu_type,gpu_hours,cost,currency: one row per GPU type; cost and currency are empty without a rate card."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["gpu_type", "gpu_hours", "cost", "currency"])
    currency = report["cost"]["currency"] if "cost" in report else ""
    for row in rows(report, "gpu"):
        writer.writerow([row["gpu"], row["gpu_hours"], row.get("cost", ""), currency if "cost" in row else ""])
    return out.getvalue()


def markdown(report: dict[str, Any]) -> str:
    title, totals = _title(report)
    lines = [f"# {title}", "", f"**{totals}**"]
    for group in GROUPS:
        breakdown = report[f"breakdown_by_{group}"]
        if breakdown:
            lines += ["", f"| {group} | GPU-hours |", "|---|---:|"]
            lines += [f"| {key} | {hours:g} |" for key, hours in breakdown.items()]
    return "\n".join(lines) + "\n"
