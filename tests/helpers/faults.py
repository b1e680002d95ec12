"""What every fault test checks at the end, and the small tools that inject the faults."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 40  # the standard input: 40 loose PNGs of 64 px

Key = tuple[str, "int | None", "int | None"]


def row_key(row: dict[str, Any]) -> Key:
    """A row's identity: ``(source_uri, member_index, frame_index)``."""
    return row["source_uri"], row["member_index"], row["frame_index"]


def _strip_scheme(uri: str) -> str:
    return uri[len("s3://"):] if uri.startswith("s3://") else uri


def read_parts(run_dir: str | Path, fs: Any = None) -> list[dict[str, Any]]:
    """Every row of every part of a run (local folder, or ``s3://`` with an s3fs filesystem ``fs``)."""
    if fs is None:
        paths = sorted(Path(run_dir, "scores").glob("part-*.parquet"))
        tables = [pq.read_table(p) for p in paths]
    else:
        fs.invalidate_cache()
        paths = sorted(fs.glob(f"{_strip_scheme(str(run_dir))}/scores/part-*.parquet"))
        tables = [pq.read_table(io.BytesIO(fs.cat_file(p))) for p in paths]
    for path, table in zip(paths, tables, strict=True):
        assert "member_index" in table.column_names, f"{path}: no member_index column"
    return [row for table in tables for row in table.to_pylist()]


def assert_complete(run_dir: str | Path, expected_inputs: int | Collection[Key], fs: Any = None
                    ) -> list[dict[str, Any]]:
    """Rows == inputs and no duplicate row keys; ``expected_inputs`` is a count or the exact keys.
    Returns the rows."""
    rows = read_parts(run_dir, fs)
    keys = Counter(row_key(r) for r in rows)
    duplicates = {k: n for k, n in keys.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} duplicate row keys, e.g. {list(duplicates.items())[:3]}"
    expected = expected_inputs if isinstance(expected_inputs, int) else len(set(expected_inputs))
    assert len(rows) == expected, f"{len(rows)} rows for {expected} inputs"
    if not isinstance(expected_inputs, int):
        assert set(keys) == set(expected_inputs)
    return rows


def markers(run_dir: str | Path, fs: Any = None) -> list[str]:
    if fs is None:
        return sorted(p.stem for p in Path(run_dir, "_markers").glob("*.json"))
    fs.invalidate_cache()
    return sorted(Path(p).stem for p in fs.glob(f"{_strip_scheme(str(run_dir))}/_markers/*.json"))


def assert_all_units_marked(run_dir: str | Path, summary: dict[str, Any], fs: Any = None) -> None:
    assert summary["failed_units"] == [], summary["failed_units"]
    assert len(markers(run_dir, fs)) == summary["n_units"], (markers(run_dir, fs), summary["n_units"])


def loose_keys(folder: Path) -> set[Key]:
    return {(str(p), None, None) for p in sorted(folder.iterdir())}


def one_error_line(stderr: str) -> str:
    """The one ``error:`` line a failed job prints on stderr (and no traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"expected one 'error:' line on stderr, got {len(lines)}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def score_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.score", *args]


def run_job(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a job to the end; a job that outlives ``timeout`` is killed and the test fails (no hang)."""
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(command[1:4])} still running after {timeout:g} s (hang):\n"
                             f"{out[-2000:]}\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Background(threading.Thread):
    """A daemon thread whose exception is re-raised by :meth:`result`."""

    def __init__(self, target: Callable[[], Any]):
        super().__init__(daemon=True)
        self._target_fn, self.value, self.error = target, None, None

    def run(self) -> None:
        try:
            self.value = self._target_fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def result(self, timeout: float) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"background step still running after {timeout:g} s"
        if self.error is not None:
            raise self.error
        return self.value


def score_worker_processes() -> list[Any]:
    """``ScoreWorker`` actor processes of this test session's Ray (descendants of this process only)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ScoreWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def lying_avi(path: Path, n_frames: int = 20, claimed: int = 10**9, pad_bytes: int = 0) -> Path:
    """A real AVI of ``n_frames`` frames whose headers claim ``claimed`` frames (avih dwTotalFrames,
    the video strh dwLength); ``pad_bytes`` of JUNK chunk at the end make the file as large as a
    real video's without adding frames."""
    from pipeline.demo_data import make_video

    make_video(path, n_frames=n_frames, size=64)
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    strh = data.find(b"strh")
    assert avih > 0 and strh > 0 and data[strh + 8:strh + 12] == b"vids"
    assert struct.unpack_from("<I", data, avih + 8 + 16)[0] == n_frames
    assert struct.unpack_from("<I", data, strh + 8 + 32)[0] == n_frames
    struct.pack_into("<I", data, avih + 8 + 16, claimed)  # MainAVIHeader.dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, claimed)  # AVIStreamHeader.dwLength
    if pad_bytes:
        data += b"JUNK" + struct.pack("<I", pad_bytes) + bytes(pad_bytes)
        struct.pack_into("<I", data, 4, len(data) - 8)  # the RIFF size
    path.write_bytes(bytes(data))
    return path
