"""Shared benchmark plumbing: every table states the exact command, the data, the seed and the machine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from npuq.io import write_json, write_text  # noqa: E402
from npuq.report.tables import command_line, machine_info, markdown_table, print_table  # noqa: E402

RESULTS = REPO / "bench" / "results"
SHARED = REPO.parent / "shared" / "data"
SEVEN_SCENES = SHARED / "real" / "7scenes-redkitchen"
CACHE = REPO / ".npuq-cache" / "bench"


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def publish(name: str, title: str, rows: list[dict[str, Any]], columns: list[str],
            context: dict[str, Any]) -> Path:
    """Print the table with its provenance and save JSON + markdown under bench/results/."""
    context = {"command": command_line(), **context}
    context["machine"] = context.get("machine") or machine_info()  # a replot keeps the run's machine
    print_table(rows, columns, title=title)
    for key, value in context.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{name}.json", {"title": title, "context": context, "rows": rows})
    md = [f"### {title}", "", markdown_table(rows, columns), ""]
    md += [f"- {k}: `{json.dumps(v) if isinstance(v, dict | list) else v}`" for k, v in context.items()]
    return write_text(RESULTS / f"{name}.md", "\n".join(md) + "\n")
