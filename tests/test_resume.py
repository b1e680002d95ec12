"""Resume and exactly-once output: what a re-run with the same run name does after added inputs,
a changed bank, a unit that failed for good, a crash between part and marker, a truncated tar."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import FitConfig, ScoreConfig
from pipeline.detectors.patchcore.fit import run_fit
from pipeline.errors import ConfigError, StorageError
from pipeline.io.sources import WorkUnit, list_inputs, plan_units, stable_hash
from pipeline.io.storage import Storage
from pipeline.results import sink as sinks
from pipeline.score import ScoreWorker, resolve_model, run_score
from tests.helpers.runs import small_patchcore

NO_TRACKING = {"tracking": {"enabled": False}}


def fit_bank(normal: Path, bank: Path) -> Path:
    run_fit(FitConfig.model_validate({
        "normal": str(normal), "bank": str(bank), "patchcore": small_patchcore(calibration_fraction=0),
        "runtime": {"workers": 1}} | NO_TRACKING))
    return bank


@pytest.fixture(scope="module")
def bank(ray_runtime, dataset, tmp_path_factory) -> Path:
    return fit_bank(dataset / "train" / "good", tmp_path_factory.mktemp("resume") / "bank")


def images(dataset: Path, folder: Path, n: int) -> Path:
    """``n`` test images (good and defect alternating) copied into ``folder``."""
    folder.mkdir(parents=True)
    sources = [p for pair in zip(sorted((dataset / "test" / "good").glob("*.png")),
                                 sorted((dataset / "test" / "defect").glob("*.png")), strict=True) for p in pair]
    for src in sources[:n]:
        shutil.copy(src, folder / f"{src.parent.name}-{src.name}")
    return folder


def cfg(bank: Path, inputs: Path, output: Path, run_name: str, **extra) -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": str(inputs), "bank": str(bank), "output": str(output), "run_name": run_name,
        "images_per_unit": 2, "heatmaps": "none", "runtime": {"workers": 1}} | NO_TRACKING | extra)


def rows_of(run: Path) -> list[dict]:
    return pads.dataset(str(run / "scores"), format="parquet").to_table().to_pylist()


def row_keys(rows: list[dict]) -> list[tuple]:
    return [(r["source_uri"], r["member_index"], r["frame_index"]) for r in rows]


def markers(run: Path) -> set[str]:
    return {p.stem for p in (run / "_markers").glob("*.json")}


def test_resume_after_an_input_was_added_scores_it_once(bank, dataset, tmp_path):
    inputs = images(dataset, tmp_path / "in", 6)
    first = run_score(cfg(bank, inputs, tmp_path / "out", "nightly"))
    run = Path(first["output"])
    assert first["n_inputs"] == 6 and first["n_ok"] == 6
    n_buckets = json.loads((run / "run.json").read_text())["n_buckets"]  # kept for the re-run
    assert n_buckets == 3 and len(markers(run)) == first["n_units"] >= 2
    # a new image whose bucket already holds a completed unit
    new = next(inputs / f"late-{i}.png" for i in range(100)
               if f"u{stable_hash(str(inputs / f'late-{i}.png')) % n_buckets:05d}" in markers(run))
    shutil.copy(dataset / "train" / "good" / "0000.png", new)

    again = run_score(cfg(bank, inputs, tmp_path / "out", "nightly"))
    rows = rows_of(run)
    assert again["n_inputs"] == len(rows) == 7 and again["n_ok"] == 7 and not again["failed_units"]
    assert len(set(row_keys(rows))) == 7  # no duplicates
    (late,) = [r for r in rows if r["source_uri"] == str(new)]
    assert late["status"] == "ok" and late["score"] > 0
    assert again["n_units_scored"] == 1 and again["n_units_skipped_as_complete"] == first["n_units"] - 1


def test_resume_with_a_different_bank_is_refused(bank, dataset, tmp_path):
    inputs = images(dataset, tmp_path / "in", 2)
    run_score(cfg(bank, inputs, tmp_path / "out", "once"))
    other = fit_bank(dataset / "test" / "good", tmp_path / "other-bank")
    with pytest.raises(ConfigError, match="run_name=once.*model_uri"):
        run_score(cfg(other, inputs, tmp_path / "out", "once"))
    assert len(rows_of(tmp_path / "out" / "once")) == 2  # the first attempt's results are untouched


def test_a_unit_that_fails_for_good_gets_error_rows_and_no_marker_then_a_rerun_fills_it(bank, dataset, tmp_path):
    inputs = images(dataset, tmp_path / "in", 3)
    failing = cfg(bank, inputs, tmp_path / "out", "slow", images_per_unit=4,
                  runtime={"workers": 1, "unit_timeout_s": 0.001})  # no unit can finish in 1 ms
    first = run_score(failing)
    run = Path(first["output"])
    (unit_id,) = first["failed_units"]
    rows = rows_of(run)
    assert len(rows) == first["n_inputs"] == first["n_errors"] == 3 and first["n_ok"] == 0
    assert {r["source_uri"] for r in rows} == {str(p) for p in inputs.iterdir()}
    assert all(r["status"] == "error" and "unit_timeout_s" in r["error"] and r["unit_id"] == unit_id for r in rows)
    assert not markers(run)

    again = run_score(cfg(bank, inputs, tmp_path / "out", "slow", images_per_unit=4))
    rows = rows_of(run)
    assert not again["failed_units"] and again["n_units_scored"] == 1
    assert len(rows) == again["n_inputs"] == again["n_ok"] == 3
    assert len(set(row_keys(rows))) == 3 and {r["status"] for r in rows} == {"ok"}
    assert markers(run) == {unit_id}


@pytest.fixture(scope="module")
def worker(bank, tmp_path_factory):
    """A ScoreWorker in this process (as bench/ours_patchcore.py runs one), no Ray."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("worker")
    config = cfg(bank, out / "unused-input", out / "out", "direct", images_per_unit=4)
    scorer = ScoreWorker(config, "direct", resolve_model(Storage(config.storage), config))
    yield scorer
    torch.set_num_threads(threads)


def test_a_crash_while_writing_the_part_leaves_no_marker_and_a_rerun_redoes_the_unit(
        worker, bank, dataset, tmp_path, monkeypatch):
    inputs = images(dataset, tmp_path / "in", 3)
    config = cfg(bank, inputs, tmp_path / "out", "crash", images_per_unit=4)
    worker.cfg = config
    (unit,), _ = plan_units(list_inputs(worker.storage, str(inputs)), config.images_per_unit)
    run = tmp_path / "out" / "crash"
    calls = []

    def failing_part(storage, uri, rows):
        calls.append("part")
        raise StorageError(f"{uri}: disk full")

    def recorded_marker(storage, uri, fingerprint, counts):
        calls.append("marker")
        write_marker(storage, uri, fingerprint, counts)

    write_marker = sinks.write_marker
    monkeypatch.setattr(sinks, "write_part", failing_part)
    monkeypatch.setattr(sinks, "write_marker", recorded_marker)
    with pytest.raises(StorageError, match="disk full"):
        worker.score_unit(unit)
    assert calls == ["part"] and not markers(run)  # the part failed: no marker may claim the unit is done
    monkeypatch.undo()

    again = run_score(config)  # the same run name: the unit was never completed, so it is scored now
    assert again["n_units_scored"] == 1 and again["n_ok"] == 3
    rows = rows_of(run)
    assert len(rows) == 3 and len(set(row_keys(rows))) == 3 and markers(run) == {unit.unit_id}


def test_a_truncated_tar_gives_ok_rows_before_the_break_and_one_error_row(worker, dataset, tmp_path):
    members = sorted((dataset / "test" / "good").glob("*.png"))
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        for src in members:
            tar.add(src, arcname=src.name)
    with tarfile.open(path) as tar:
        third = tar.getmembers()[2]
    path.write_bytes(path.read_bytes()[: third.offset_data + third.size // 2])  # cut inside member 2
    worker.cfg = cfg(Path("unused"), tmp_path, tmp_path / "out", "direct")
    unit = WorkUnit("t-cut", tar=str(path))
    counts = worker.score_unit(unit)
    rows = pq.read_table(io.BytesIO((tmp_path / "out" / "direct" / "scores" / "part-t-cut.parquet").read_bytes())
                         ).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["member"] for r in ok] == [m.name for m in members[:2]] and all(r["score"] > 0 for r in ok)
    (error,) = [r for r in rows if r["status"] != "ok"]
    assert error["status"] == "error" and "tar shard unreadable" in error["error"]
    assert counts["n_rows"] == 3 and counts["n_ok"] == 2 and counts["n_errors"] == 1
    assert (tmp_path / "out" / "direct" / "_markers" / "t-cut.json").is_file()
