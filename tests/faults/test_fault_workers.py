"""Process faults: a worker SIGKILLed mid-unit, the driver SIGKILLed and the run repeated, more
workers than the machine holds, a GPU asked of a machine without one, workers a cluster cannot place."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from pathlib import Path

import pytest

from pipeline.config import ScoreConfig
from pipeline.score import run_score
from tests.helpers.faults import (
    N_IMAGES,
    REPO,
    Background,
    assert_all_units_marked,
    assert_complete,
    loose_keys,
    markers,
    one_error_line,
    run_job,
    score_command,
    score_worker_processes,
    wait_for,
)


def score_cfg(fault_data, output: Path, **extra) -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": str(fault_data.images), "bank": str(fault_data.bank), "output": str(output), "run_name": "r",
        "images_per_unit": 8, "batch_size": 2, "runtime": {"workers": 2}, "tracking": {"enabled": False}} | extra)


def cli_args(fault_data, output: Path, *extra: str) -> list[str]:
    return ["--input", str(fault_data.images), "--bank", str(fault_data.bank), "--output", str(output),
            "--no-tracking", *extra]


def test_worker_sigkilled_mid_unit(fault_data, tmp_path, record_property):
    out = tmp_path / "out"
    killed: list[str] = []

    def kill_a_busy_worker() -> None:
        wait_for(lambda: list((out / "r" / "scores").glob("part-*.parquet")), 120, "the first part")
        workers = wait_for(score_worker_processes, 10, "a ScoreWorker process")
        busy = [p for p in workers if "score_unit" in " ".join(p.cmdline())] or workers
        title = " ".join(" ".join(busy[0].cmdline()).split())
        busy[0].send_signal(signal.SIGKILL)
        killed.append(f"{title} (pid {busy[0].pid}) with {len(markers(out / 'r'))} units marked")

    killer = Background(kill_a_busy_worker)
    killer.start()
    summary = run_score(score_cfg(fault_data, out))
    killer.result(timeout=10)
    assert killed, "no ScoreWorker was killed"
    rows = assert_complete(summary["output"], loose_keys(fault_data.images))
    assert all(r["status"] == "ok" for r in rows), {r["error"] for r in rows if r["status"] != "ok"}
    assert_all_units_marked(summary["output"], summary)
    record_property("outcome", f"killed {killed[0]}; {len(rows)} rows / {N_IMAGES} inputs, 0 duplicates, "
                               f"{len(markers(summary['output']))}/{summary['n_units']} markers, failed_units=[]")


def test_driver_sigkilled_then_rerun_with_the_same_run_name(fault_data, cluster_env, tmp_path, record_property):
    out = tmp_path / "out"
    command = score_command(*cli_args(fault_data, out, "--run-name", "x", "--workers", "2", "--images-per-unit", "4",
                                      "--batch-size", "2"))
    with open(tmp_path / "first.log", "w+") as log:
        proc = subprocess.Popen(command, env=cluster_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            def first_marker() -> bool:
                assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before it was killed"
                return bool(markers(out / "x"))

            wait_for(first_marker, 120, "the first marker")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        except BaseException:
            proc.kill()
            proc.wait()
            log.seek(0)
            print(log.read()[-3000:])
            raise
    marked_at_kill = len(markers(out / "x"))
    assert not (out / "x" / "summary.json").exists()

    again = run_job(command, cluster_env, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "x" / "summary.json").read_text())
    assert summary["n_units_skipped_as_complete"] >= 1  # the re-run resumed, it did not start over
    rows = assert_complete(out / "x", loose_keys(fault_data.images))
    assert all(r["status"] == "ok" for r in rows)
    assert_all_units_marked(out / "x", summary)
    record_property("outcome", f"killed with {marked_at_kill}/{summary['n_units']} units marked; re-run exit 0, "
                               f"{summary['n_units_skipped_as_complete']} units skipped as complete, "
                               f"{len(rows)} rows / {N_IMAGES} inputs, 0 duplicates")


def test_more_workers_than_the_local_machine_holds(fault_data, tmp_path, caplog, record_property):
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
        summary = run_score(score_cfg(fault_data, tmp_path / "out", heatmaps="none", runtime={"workers": 4}))
    sizing = [r.getMessage() for r in caplog.records
              if r.name.startswith("pipeline.runtime") and "runtime.workers" in r.message]
    assert len(sizing) == 1, sizing
    assert sizing[0].startswith("runtime.workers=4: this machine") and "fits 2 workers" in sizing[0]
    assert sizing[0].endswith("using 2"), sizing[0]
    rows = assert_complete(summary["output"], loose_keys(fault_data.images))
    assert_all_units_marked(summary["output"], summary)
    record_property("outcome", f"WARNING {sizing[0]!r}; {len(rows)} rows / {N_IMAGES} inputs, 0 duplicates")


def test_gpu_worker_on_a_machine_without_gpu_fails_before_any_work(ray_runtime, fault_data, tmp_path, capsys,
                                                                    monkeypatch, record_property):
    """The CLI entry point in-process on the session's local Ray (no RAY_ADDRESS): the pool is sized
    to this machine, which has no GPU to give."""
    from jobs.score import main

    if ray_runtime.cluster_resources().get("GPU"):
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(cli_args(fault_data, out, "--run-name", "g", "--num-gpus-per-worker", "1"))
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = one_error_line(err)
    assert "--num-gpus-per-worker" in line and "GPU" in line, line
    assert not (out / "g" / "scores").exists()
    record_property("outcome", f"exit {code}: {line}")


def test_workers_a_cluster_cannot_place_are_given_up(fault_data, cluster_env, tmp_path, record_property):
    out = tmp_path / "out"
    proc = run_job(score_command(*cli_args(fault_data, out, "--run-name", "p", "--num-gpus-per-worker", "1",
                                           "--placement-timeout-s", "3")), cluster_env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "runtime.placement_timeout_s=3" in line and "GPU 1" in line, line
    assert not list((out / "p").glob("scores/*.parquet"))
    record_property("outcome", f"exit {proc.returncode}: {line}")
