"""MLflow unreachable: the job stops before any work with one line naming tracking.tracking_uri."""

from __future__ import annotations

import time

from tests.helpers.faults import one_error_line, run_job, score_command
from tests.helpers.runs import free_port


def test_unreachable_tracking_server_fails_before_any_work(fault_data, cluster_env, tmp_path, record_property):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "out"
    start = time.monotonic()
    proc = run_job(score_command("--input", str(fault_data.images), "--bank", str(fault_data.bank),
                                 "--output", str(out), "--run-name", "m", "--tracking-uri", closed),
                   cluster_env, timeout=120)
    seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "tracking.tracking_uri" in line and closed in line, line
    assert not (out / "m" / "scores").exists(), "scored although tracking was unreachable"
    assert seconds < 60, f"took {seconds:.0f} s to give up on a closed port"
    record_property("outcome", f"exit 2 after {seconds:.1f} s: {line}")
