"""Evaluate a scored run against per-frame labels: ``python -m jobs.evaluate --output RUN_URI --labels FILE``."""

from __future__ import annotations

import json
import sys

from jobs.cli import build_parser, overrides, run_main
from pipeline.config import StorageSettings, TrackingSettings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, [])
    parser.add_argument("--output", required=True, help="the run's folder: {output}/{run_name}")
    parser.add_argument("--labels", required=True, help="CSV frame_index,label (or source,frame_index,label)")
    args = parser.parse_args(argv)

    def job() -> dict:
        from pipeline.evaluate import frame_auc, parse_labels
        from pipeline.io.storage import Storage, join
        from pipeline.tracking import start_run
        from pipeline.video_summary import read_rows

        flags = overrides(args)
        storage = Storage(StorageSettings(endpoint_url=flags.get("storage.endpoint_url")))
        result = frame_auc(read_rows(storage, args.output), parse_labels(storage.read_bytes(args.labels).decode()))
        storage.write_bytes(join(args.output, "evaluation.json"), json.dumps(result, indent=2).encode())
        tracking = TrackingSettings(**{k.split(".", 1)[1]: v for k, v in flags.items() if k.startswith("tracking.")})
        with start_run(tracking, "evaluate-" + args.output.rstrip("/").rsplit("/", 1)[-1], "evaluate") as run:
            run.params({"output": args.output, "labels": args.labels})
            run.metrics({k: v for k, v in result.items()})
        return result

    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
