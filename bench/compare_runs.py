"""Compare two scored runs, e.g. the same archive scored by two builds: ``summary.json`` without run ids and times,
every Parquet row sorted by its key, and ``evaluation.json``. Prints what differs.

    python bench/compare_runs.py OUTPUT_A/RUN OUTPUT_B/RUN
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

VOLATILE = {"seconds", "images_per_s", "mlflow_run_id", "output", "input", "input_uri", "model_uri", "created_at",
            "nodes", "table", "report", "labels"}
COLUMNS = ["source_uri", "member", "member_index", "frame_index", "status", "error", "score", "is_anomaly",
           "threshold", "width", "height", "model_version", "detector", "heatmap_uri", "map_uri"]


def _relative(value: Any, roots: tuple[str, ...]) -> Any:
    """``value`` with each run's own folder written as ROOT, so paths inside two runs compare equal."""
    if isinstance(value, dict):
        return {k: _relative(v, roots) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_relative(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "ROOT")
    return value


def _json_diff(a: Path, b: Path, roots: tuple[str, ...]) -> dict[str, Any]:
    if not a.exists() or not b.exists():
        return {"present": (a.exists(), b.exists())}
    left, right = _relative(json.loads(a.read_text()), roots), _relative(json.loads(b.read_text()), roots)
    return {k: (left.get(k), right.get(k)) for k in sorted(set(left) | set(right)) if left.get(k) != right.get(k)}


def _rows(run: Path, roots: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = ds.dataset(run / "scores", format="parquet").to_table(columns=COLUMNS).to_pylist()
    key = lambda r: (r["source_uri"], r["member_index"] if r["member_index"] is not None else -1,  # noqa: E731
                     r["frame_index"] if r["frame_index"] is not None else -1)
    return sorted((_relative(r, roots) for r in rows), key=lambda r: key(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    roots = (str(args.run_a.resolve().parent.parent), str(args.run_b.resolve().parent.parent))
    summary = _json_diff(args.run_a / "summary.json", args.run_b / "summary.json", roots)
    print("summary.json, run ids and times left out:", json.dumps(summary, indent=1) if summary else "equal")
    a, b = _rows(args.run_a, roots), _rows(args.run_b, roots)
    differing = [(x, y) for x, y in zip(a, b, strict=False) if x != y]
    print(f"rows: {len(a)} vs {len(b)}; rows that differ in {', '.join(COLUMNS)}: {len(differing)}")
    for x, y in differing[:5]:
        print("  ", {k: (x[k], y[k]) for k in COLUMNS if x[k] != y[k]})
    evaluation = _json_diff(args.run_a / "evaluation.json", args.run_b / "evaluation.json", roots)
    print("evaluation.json:", json.dumps(evaluation, indent=1) if evaluation else "equal")


if __name__ == "__main__":
    main()
