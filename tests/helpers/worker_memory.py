"""Peak memory of one score worker on one work unit, outside Ray (the same class, in this process):

    python -m tests.helpers.worker_memory BANK FOLDER BATCH_SIZE [MAX_DECODED_BYTES]

Prints one JSON line: the resident memory after the detector loaded, the peak after scoring the unit
(``ru_maxrss``), and the unit's counts.
"""

from __future__ import annotations

import json
import resource
import sys

import psutil

from pipeline.config import ScoreConfig
from pipeline.io.sources import list_inputs, plan_units
from pipeline.io.storage import Storage
from pipeline.score import ScoreWorker, resolve_model


def main(bank: str, folder: str, batch_size: int, max_decoded_bytes: int | None = None) -> dict:
    decode = {"max_decoded_bytes": max_decoded_bytes} if max_decoded_bytes else {}
    cfg = ScoreConfig.model_validate({
        "input": folder, "bank": bank, "output": folder + "-out", "run_name": "memory", "batch_size": batch_size,
        "heatmaps": "none", "decode": decode, "tracking": {"enabled": False}})
    storage = Storage(cfg.storage)
    worker = ScoreWorker(cfg, "memory", resolve_model(storage, cfg))
    (unit,), _ = plan_units(list_inputs(storage, folder), images_per_unit=10_000)
    loaded_mb = psutil.Process().memory_info().rss / 2**20
    counts = worker.score_unit(unit)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loaded_mb": loaded_mb, "peak_mb": peak_mb, "max_decoded_bytes": cfg.decode.max_decoded_bytes,
            "n_ok": counts["n_ok"], "n_rows": counts["n_rows"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *(int(a) for a in sys.argv[4:]))))
