"""Mark the rows `auto` stands for in a bench_train.py result, with pipeline/hardware.py as it is now.

    python benchmarks/auto_rows.py benchmarks/results/cpu-avx512-bf16.json

Rewrites the .json and its .md: after a change to the table of choices, the benchmark need not run
again to show which row the train stage would now take.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_train import is_auto_row, markdown  # noqa: E402


def main() -> None:
    path = Path(sys.argv[1])
    results = json.loads(path.read_text())
    for row in results["throughput"]:
        if "failed" in row:
            continue
        row["auto"] = is_auto_row(row, row.get("cpu_class"))
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
