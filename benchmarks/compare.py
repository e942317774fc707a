"""Compare two `run.py` results of the same rows (two commits, measured in one session) as ratios.

    python benchmarks/compare.py --base results/a.json --new results/b.json [--out results/c.json]

Prints one markdown table (cells/s of each side, new / base) and, with ``--out``, writes it with
both files' environments. Rows that are not in both files are listed, not compared. A ratio says
something only when both runs were made on the same machine, back to back, under the same load
(the "other load" column of each run says how quiet it was).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in result["results"] if row.get("status") == "ok"}


def compare(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Per row present in both: cells/s of base and new, their ratio, and the foreign load."""
    base_rows, new_rows = _rows(base), _rows(new)
    rows = []
    for name, new_row in new_rows.items():
        if name in base_rows:
            before, after = base_rows[name]["cells_per_s"], new_row["cells_per_s"]
            rows.append(
                {
                    "name": name,
                    "base_cells_per_s": before,
                    "new_cells_per_s": after,
                    "new_over_base": after / before,
                    "other_load_cores": [
                        base_rows[name]["foreign_cpu_cores"],
                        new_row["foreign_cpu_cores"],
                    ],
                }
            )
    only = sorted(set(base_rows) ^ set(new_rows))
    return {"rows": rows, "not_in_both": only}


def markdown(comparison: dict[str, Any], base_label: str, new_label: str) -> str:
    lines = [
        f"| row | {base_label} cells/s | {new_label} cells/s | new / base | other load (cores) |",
        "|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        load = " / ".join(f"{value:.2f}" for value in row["other_load_cores"])
        lines.append(
            f"| {row['name']} | {row['base_cells_per_s']:,.0f} | {row['new_cells_per_s']:,.0f} "
            f"| {row['new_over_base']:.2f} | {load} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    arguments = parser.parse_args()
    base, new = (json.loads(path.read_text()) for path in (arguments.base, arguments.new))
    comparison = compare(base, new)
    labels = [result["environment"]["commit"][:7] for result in (base, new)]
    table = markdown(comparison, *labels)
    print(table)
    if arguments.out is not None:
        arguments.out.write_text(
            json.dumps(
                {
                    "base": {"file": str(arguments.base), "environment": base["environment"]},
                    "new": {"file": str(arguments.new), "environment": new["environment"]},
                    "settings": new["settings"],
                    **comparison,
                    "markdown": table,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
