"""Import an authors' released checkpoint: ``python -m jobs.import_checkpoint --format F --source URI --out URI``.

Writes our artifact (a PatchCore bank version, or a checkpoint for ``jobs.score --model``) and logs the
conversion to MLflow with the source's sha256. See docs/weights.md and each detector's README.
"""

from __future__ import annotations

import sys
from typing import Any

from jobs.cli import Flag, run_config_job
from pipeline.config import ImportConfig

FLAGS = [Flag("--format", "format"), Flag("--source", "source", "URI"), Flag("--out", "out", "URI"),
         Flag("--trust-pickle", "trust_pickle")]


def _run(cfg: ImportConfig) -> dict[str, Any]:
    from pipeline.import_checkpoint import run_import  # imports torch: only once the config is valid

    return run_import(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_config_job("python -m jobs.import_checkpoint", __doc__, ImportConfig, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
