"""S3 outages through a TCP relay in front of moto: a cut shorter than the retry budget, one longer
(then restored and re-run with the same run name), and a spell of HTTP 503 SlowDown answers."""

from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import pytest
import s3fs
import yaml

from pipeline.config import ScoreConfig
from pipeline.score import run_score
from tests.helpers.faults import (
    N_IMAGES,
    Background,
    assert_all_units_marked,
    assert_complete,
    markers,
    one_error_line,
    run_job,
    score_command,
    wait_for,
)
from tests.helpers.relay import Relay

IN, OUT = "faults-in", "faults-out"
OUTAGE_S = 2.5  # the short outages; the retry budget of max_attempts=6 sleeps 7.75 s at least
RUN_LIMIT_S = 150.0  # an in-process run still going after this is a hang: the test fails instead


@pytest.fixture()
def moto_fs(s3_endpoint) -> s3fs.S3FileSystem:
    """Straight to moto (never through the relay): set-up and checks."""
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint},
                           skip_instance_cache=True)
    for bucket in (IN, OUT):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    return fs


@pytest.fixture()
def relay(s3_endpoint):
    target = urlparse(s3_endpoint)
    proxy = Relay(target.hostname, target.port)
    yield proxy
    proxy.close()


@pytest.fixture()
def s3_input(fault_data, moto_fs, request) -> tuple[str, set]:
    """The 40 images under s3://faults-in/<test name>/, and their row keys."""
    prefix = f"{IN}/{request.node.name.replace('[', '-').rstrip(']')}"
    moto_fs.put(str(fault_data.images) + "/", prefix + "/", recursive=True)
    keys = {(f"s3://{prefix}/{p.name}", None, None) for p in fault_data.images.iterdir()}
    return f"s3://{prefix}", keys


def storage_settings(relay: Relay, **extra) -> dict:
    return {"endpoint_url": relay.url, "key": "testing", "secret": "testing", "connect_timeout_s": 1} | extra


def score_cfg(fault_data, relay: Relay, input_uri: str, run_name: str, **storage) -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": input_uri, "bank": str(fault_data.bank), "output": f"s3://{OUT}", "run_name": run_name,
        "images_per_unit": 8, "batch_size": 2, "storage": storage_settings(relay, **storage),
        "runtime": {"workers": 2, "unit_timeout_s": 60}, "tracking": {"enabled": False}})


def run_score_bounded(cfg: ScoreConfig) -> dict:
    """``run_score`` that fails the test, rather than hanging it, if it outlives RUN_LIMIT_S."""
    run = Background(lambda: run_score(cfg))
    run.start()
    return run.result(timeout=RUN_LIMIT_S)


def outage_after_first_part(moto_fs, relay: Relay, run_name: str, mode: str, seconds: float | None) -> Background:
    """Once the run's first part is in S3: relay ``mode`` for ``seconds`` (None: until told otherwise).
    The thread returns how many units were marked complete when the outage began."""

    def outage() -> int:
        def first_part() -> bool:
            moto_fs.invalidate_cache()
            return bool(moto_fs.glob(f"{OUT}/{run_name}/scores/part-*.parquet"))

        wait_for(first_part, 120, "the first part in S3", interval=0.1)
        relay.set_mode(mode)
        marked = len(markers(f"s3://{OUT}/{run_name}", moto_fs))
        if seconds is not None:
            time.sleep(seconds)
            relay.set_mode("forward")
        return marked

    thread = Background(outage)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_s3_outage_shorter_than_the_retry_budget(fault_data, moto_fs, relay, s3_input, mode, record_property):
    """``refuse``: connections refused and open ones cut; ``503``: every request answered SlowDown."""
    input_uri, keys = s3_input
    run_name = f"short-{mode}"
    outage = outage_after_first_part(moto_fs, relay, run_name, mode, OUTAGE_S)
    summary = run_score_bounded(score_cfg(fault_data, relay, input_uri, run_name, max_attempts=6))
    marked_at_outage = outage.result(timeout=OUTAGE_S + 5)
    assert marked_at_outage < summary["n_units"], "the run was over before the outage began"
    if mode == "503":
        assert relay.answered_503 > 0, "no request met the 503s"
    rows = assert_complete(summary["output"], keys, fs=moto_fs)
    assert summary["n_errors"] == 0 and all(r["status"] == "ok" for r in rows), {r["error"] for r in rows}
    assert_all_units_marked(summary["output"], summary, fs=moto_fs)
    met = f", {relay.answered_503} requests answered 503" if mode == "503" else ""
    record_property("outcome", f"{mode} for {OUTAGE_S:g} s with {marked_at_outage}/{summary['n_units']} units "
                               f"marked{met}: completed, failed_units=[], {len(rows)} rows / {N_IMAGES} inputs, "
                               f"0 errors, 0 duplicates")


def test_s3_outage_longer_than_the_retry_budget_then_rerun(fault_data, moto_fs, relay, s3_input, cluster_env,
                                                           tmp_path, record_property):
    input_uri, keys = s3_input
    config = tmp_path / "score.yaml"
    config.write_text(yaml.safe_dump({"storage": storage_settings(relay, max_attempts=2)}))
    command = score_command("--config", str(config), "--input", input_uri, "--bank", str(fault_data.bank),
                            "--output", f"s3://{OUT}", "--run-name", "long", "--images-per-unit", "8",
                            "--batch-size", "2", "--workers", "2", "--no-tracking")
    outage = outage_after_first_part(moto_fs, relay, "long", "refuse", None)
    start = time.monotonic()
    first = run_job(command, cluster_env, timeout=180)
    seconds = time.monotonic() - start
    relay.set_mode("forward")
    assert first.returncode == 3, first.stdout[-2000:] + first.stderr[-3000:]
    marked_at_outage = outage.result(timeout=5)
    line = one_error_line(first.stderr)
    assert "--run-name long" in line, line
    marked_after_first = len(markers(f"s3://{OUT}/long", moto_fs))

    again = run_score_bounded(score_cfg(fault_data, relay, input_uri, "long", max_attempts=2))
    assert again["failed_units"] == []
    assert again["n_units_skipped_as_complete"] == marked_after_first
    rows = assert_complete(again["output"], keys, fs=moto_fs)
    assert all(r["status"] == "ok" for r in rows), {r["error"] for r in rows if r["status"] != "ok"}
    assert_all_units_marked(again["output"], again, fs=moto_fs)
    summary = json.loads(moto_fs.cat_file(f"{OUT}/long/summary.json"))
    assert summary["n_inputs"] == N_IMAGES and summary["failed_units"] == []
    record_property("outcome", f"cut with {marked_at_outage}/{again['n_units']} units marked; first run exit "
                               f"{first.returncode} after {seconds:.1f} s: {line}; re-run: "
                               f"{again['n_units_skipped_as_complete']} units skipped, failed_units=[], "
                               f"{len(rows)} rows / {N_IMAGES} inputs, 0 duplicates")
