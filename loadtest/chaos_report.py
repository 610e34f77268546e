"""The one chaos table, for the terminal (rich) and the markdown report, and the per-fault JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

COLUMNS = [("fault", "fault"), ("fault_s", "fault s"), ("requests", "requests"), ("s202", "202"),
           ("s429", "429"), ("s503", "503"), ("other", "other"), ("conn", "conn err"), ("slow_requests", "> 1 s"),
           ("accepted", "accepted"),
           ("stored", "stored in DB"), ("lost", "lost"), ("duplicated", "duplicated"),
           ("dead_lettered", "dead-lettered"), ("first_202_s", "s to 1st 202"), ("empty_queue_s", "s to empty queue"),
           ("worker_restarts", "worker restarts"), ("verdict", "verdict")]


def cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(row: dict[str, Any]) -> str:
    """OK only if nothing was lost or double counted, the server never contradicted itself, and only the
    event the DB refuses (db-reject) reached the dead-letter list: a DB outage must never dead-letter, and
    a refused row must not take its batch-mates with it. Every other group must have its details stored."""
    poison = 1 if row.get("fault_key") == "db-reject" else 0
    dead, bare = row.get("dead_lettered", 0), row.get("groups_without_details", 0)
    problems = [name for name, bad in (
        ("lost", row.get("lost", 0)), ("duplicated", row.get("duplicated", 0)),
        ("503 counted", row.get("refused_but_counted", 0)), ("dedup miss", row.get("dedup_misses", 0)),
        ("not settled", not row.get("settled", False)), ("error", row.get("error")),
        ("poison not dead-lettered", poison and not row.get("info", {}).get("dead_lettered")),
        (f"{dead - poison} events dead-lettered that the DB never refused", dead > poison),
        (f"{bare - poison} groups without details", bare > poison),
    ) if bad]
    return "OK" if not problems else "FAIL: " + ", ".join(problems)


def rich_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for key, head in COLUMNS:
        table.add_column(head, justify="left" if key in ("fault", "verdict") else "right")
    for row in rows:
        cells = [cell(row, key) for key, _ in COLUMNS]
        cells[-1] = ("[green]" if cells[-1] == "OK" else "[red]") + cells[-1]
        table.add_row(*cells)
    return table


def markdown(rows: list[dict[str, Any]], command: str, machine: str, notes: list[str]) -> str:
    lines = [f"# make chaos, {rows[0]['started'] if rows else ''}", "", f"`{command}`", "", f"Machine: {machine}", "",
             "| " + " | ".join(head for _, head in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row, key) for key, _ in COLUMNS) + " |" for row in rows]
    lines += ["", *notes, "", "Per fault (the JSON next to this file has everything):", ""]
    for row in rows:
        lines.append(f"- **{row['fault']}**: {row.get('details', '')}")
    return "\n".join(lines) + "\n"


def write(out: Path, stem: str, rows: list[dict[str, Any]], command: str, machine: str,
          notes: list[str]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(markdown(rows, command, machine, notes))
    js.write_bytes(orjson.dumps({"command": command, "machine": machine, "faults": rows},
                                option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return md, js
