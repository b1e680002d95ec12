"""The score entry point under ``ray job submit`` against a real Ray head started with ``ray start``."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import FitConfig
from pipeline.detectors.patchcore.fit import run_fit
from tests.helpers.runs import free_port, small_patchcore

RAY = shutil.which("ray", path=os.path.dirname(sys.executable))


@pytest.fixture()
def ray_head():
    gcs, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
         # own agent ports: the session's local Ray runtime already holds the defaults
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        head.terminate()
        pytest.fail("ray head did not come up in 90 s")
    yield address, env
    head.terminate()
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_score_job_runs_under_ray_job_submit(ray_runtime, ray_head, dataset, tmp_path):
    address, env = ray_head
    fit = run_fit(FitConfig.model_validate({
        "normal": str(dataset / "train" / "good"), "bank": str(tmp_path / "bank"),
        "patchcore": small_patchcore(), "tracking": {"enabled": False}}))
    out = tmp_path / "results"
    command = [RAY, "job", "submit", f"--address={address}", "--", sys.executable, "-m", "jobs.score",
               "--input", str(dataset / "test"), "--bank", str(tmp_path / "bank"), "--output", str(out),
               "--run-name", "submitted", "--workers", "2", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    for _ in range(20):  # the head's job agent comes up a little after its HTTP API
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).parent.parent)
        if "No available agent" not in proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    summary = json.loads((out / "submitted" / "summary.json").read_text())
    assert summary["n_inputs"] == summary["n_ok"] == 8 and summary["bank_version"] == fit["version"]
    assert len(list((out / "submitted" / "scores").glob("part-*.parquet"))) == summary["n_units"]
