"""Benchmark results as JSON, rendered into benchmarks/RESULTS.md (the studies' into benchmarks/studies/RESULTS.md).

A result is one JSON object (`save_result`): `benchmark` (the module that wrote it), `title`, `machine`, `date` and
`command` (each a string, or a list for a result that gathers rows of several runs), `notes` (paragraphs: what is
measured and how), `history` (paragraphs quoting earlier figures, kept when the benchmark runs again) and `tables`
(each {"columns": [...], "rows": [[cell, ...], ...]}, optional "title" and "notes"). Every other key is the
benchmark's own data: the unrounded figures its tables show and what its next run needs.

    python -m benchmarks.report   # re-render both RESULTS.md files from the saved results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, cast

from mbrl.core.atomic import write_atomic

HERE = Path(__file__).resolve().parent
REQUIRED = ("benchmark", "title", "machine", "date", "command", "tables")


def machine() -> str:
    """CPU model and usable cores of this machine, for the results table."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.machine())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, no GPU"


def distinct(values: Any) -> list[Any]:
    """`values` without repeats, in first-seen order (the machines, dates or commands of a result's rows)."""
    return list(dict.fromkeys(values))


def gathered(runs: list[dict[str, Any]], unrecorded: dict[str, str] | None = None) -> dict[str, Any]:
    """The machines, dates (first to last) and commands of a result whose rows record their own (`unrecorded`:
    the machine or date to show for rows that did not)."""
    runs = [{**(unrecorded or {}), **r} for r in runs]
    dates = sorted(distinct(r["date"] for r in runs if "date" in r))
    return {"machine": distinct(r["machine"] for r in runs if "machine" in r),
            "date": " to ".join(distinct([dates[0], dates[-1]])) if dates else "-",
            "command": distinct(r["command"] for r in runs if "command" in r)}


def load_result(path: Path, benchmark: str, rows: str = "runs") -> dict[str, Any]:
    """A benchmark's saved result (read again each time: others may have added rows), or one with no `rows`."""
    if path.exists():
        return cast(dict[str, Any], json.loads(path.read_text()))
    return {"benchmark": benchmark, rows: []}


def save_result(result: dict[str, Any], out: Path) -> None:
    """Write a benchmark's result (today's date and this machine unless it names its own; the history of the
    result it replaces), print its section and re-render the RESULTS.md files."""
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), **result}
    if "history" not in result and out.exists():
        result["history"] = json.loads(out.read_text()).get("history", [])
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise ValueError(f"a result of {result.get('benchmark')!r} lacks {', '.join(missing)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(result, indent=1) + "\n").encode())
    print("\n".join(section(result)))
    write_results_md()


def markdown_table(table: dict[str, Any]) -> list[str]:
    """A table's optional title, its rows under its columns, and its notes."""
    lines = [table["title"], ""] if table.get("title") else []
    lines += ["| " + " | ".join(table["columns"]) + " |", "|" + " --- |" * len(table["columns"])]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in row) + " |" for row in table["rows"]]
    return [*lines, "", *(line for note in table.get("notes", []) for line in (note, ""))]


def header(name: str, value: str | list[str]) -> str:
    """'Machine: m.' or 'Machines: a; b.' (an empty list: 'Machine: -.')."""
    values = [value] if isinstance(value, str) else value
    return f"{name}{'s' if len(values) > 1 else ''}: {'; '.join(values) or '-'}."


def section(result: dict[str, Any]) -> list[str]:
    """The Markdown section of one result: title, machine, date, command(s), notes, history, tables."""
    commands = [result["command"]] if isinstance(result["command"], str) else result["command"]
    lines = [f"## {result['title']}", "", header("Machine", result["machine"]) + " " + header("Date", result["date"])]
    if len(commands) == 1:
        lines[-1] += f" Command: `{commands[0]}`."
    elif commands:
        lines += ["", "Commands:", "", *(f"- `{c}`" for c in commands)]
    lines.append("")
    for note in [*result.get("notes", []), *result.get("history", [])]:
        lines += [note, ""]
    for table in result["tables"]:
        lines += markdown_table(table)
    return lines


def render(paths: list[Path], out: Path, title: str, intro: str) -> Path:
    """Write `out` with one section per JSON result in `paths`; a file in another format (older, or newer) gets a
    section that says so instead of failing the benchmark that re-renders."""
    lines = [f"# {title}", "", intro, ""]
    for path in paths:
        result = json.loads(path.read_text())
        missing, name = [key for key in REQUIRED if key not in result], path.relative_to(out.parent)
        if missing:
            note = (f"`{name}` (benchmark {result.get('benchmark')!r}) is not a result that benchmarks/report.py "
                    f"can render (no {', '.join(missing)}): its benchmark, run again with this version, rewrites it.")
            print(f"warning: {note}", file=sys.stderr)
            lines += [f"## {name}", "", note, ""]
        else:
            lines += section(result)
    out.write_text("\n".join(lines))
    return out


def write_results_md(directory: Path = HERE) -> list[Path]:
    """Rewrite `directory`/RESULTS.md from `directory`/results/*.json and `directory`/studies/RESULTS.md from the
    finished studies' `directory`/studies/*/results/*.json."""
    written = [render(sorted((directory / "results").glob("*.json")), directory / "RESULTS.md", "Benchmark results",
                      "Written by the maintained benchmarks, `python -m benchmarks.NAME` (re-render: `python -m "
                      "benchmarks.report`). Every figure comes from the command shown with it. Finished studies: "
                      "[studies/RESULTS.md](studies/RESULTS.md).")]
    studies = sorted((directory / "studies").glob("*/results/*.json"))
    if studies:
        written.append(render(studies, directory / "studies" / "RESULTS.md", "Results of the finished studies",
                              "Each study's README says what it asked and what it found; these are its tables, "
                              "from its saved results (re-render: `python -m benchmarks.report`)."))
    return written


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("\n".join(map(str, write_results_md())))
