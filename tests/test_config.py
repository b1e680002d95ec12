import subprocess
import sys

import pytest

from pipeline.config import ConfigError, FitConfig, ScoreConfig, load_config
from pipeline.io.storage import Storage, StorageError


def test_flags_override_yaml_and_errors_name_the_setting(tmp_path):
    path = tmp_path / "fit.yaml"
    path.write_text("normal: /data/good\nbank: /banks/a\npatchcore:\n  coreset_ratio: 0.2\n  image_size: 128\n")
    cfg = load_config(FitConfig, path, {"patchcore.image_size": 224})
    assert cfg.patchcore.coreset_ratio == 0.2 and cfg.patchcore.image_size == 224

    with pytest.raises(ConfigError, match=r"patchcore\.coreset_ratio.*1\.5"):
        load_config(FitConfig, path, {"patchcore.coreset_ratio": 1.5})
    with pytest.raises(ConfigError, match=r"patchcore\.backbone"):
        load_config(FitConfig, path, {"patchcore.backbone": "vgg_nonexistent"})
    path.write_text("normal: /x\nbank: /y\npatchcore:\n  coreset_ration: 0.2\n")
    with pytest.raises(ConfigError, match=r"patchcore\.coreset_ration.*Extra inputs"):
        load_config(FitConfig, path, {})


def test_missing_required_and_bad_run_name():
    with pytest.raises(ConfigError, match="output: Field required"):
        load_config(ScoreConfig, None, {"input": "/a", "bank": "/b"})
    with pytest.raises(ConfigError, match="run_name"):
        load_config(ScoreConfig, None, {"input": "/a", "bank": "/b", "output": "/c", "run_name": "../escape"})


def test_cli_reports_bad_value_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.fit", "--normal", str(tmp_path), "--bank", str(tmp_path / "b"),
         "--coreset-ratio", "0", "--no-tracking"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "patchcore.coreset_ratio" in proc.stderr


def test_unreachable_s3_fails_fast_naming_the_endpoint():
    from conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    storage = Storage(load_config(FitConfig, None, {
        "normal": "s3://b/x", "bank": "s3://b/y", "storage.endpoint_url": endpoint,
        "storage.connect_timeout_s": 1, "storage.max_attempts": 1}).storage)
    with pytest.raises(StorageError, match=rf"normal=s3://b/x: storage unreachable.*endpoint_url={endpoint}"):
        storage.check_reachable("s3://b/x", "normal")
