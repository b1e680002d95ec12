import pytest

from pipeline.config import FitConfig, ScoreConfig, load_config
from pipeline.errors import ConfigError, StorageError
from pipeline.io.storage import Storage


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
    with pytest.raises(ConfigError, match=r"output: required$"):
        load_config(ScoreConfig, None, {"input": "/a", "bank": "/b"})
    with pytest.raises(ConfigError, match=r"output \(--output\): required$"):
        load_config(ScoreConfig, None, {"input": "/a", "bank": "/b"}, {"output": "--output"})
    with pytest.raises(ConfigError, match="run_name"):
        load_config(ScoreConfig, None, {"input": "/a", "bank": "/b", "output": "/c", "run_name": "../escape"})


def test_threshold_must_be_finite(tmp_path):
    with pytest.raises(ConfigError, match=r"threshold.*finite"):
        load_config(ScoreConfig, None, {"input": "/a", "bank": "/b", "output": "/c", "threshold": float("nan")})
    path = tmp_path / "score.yaml"
    path.write_text("input: /a\nbank: /b\noutput: /c\nthreshold: .nan\n")
    with pytest.raises(ConfigError, match=r"threshold.*finite"):
        load_config(ScoreConfig, path, {})


def test_yaml_anchors_and_aliases_are_refused(tmp_path):
    path = tmp_path / "fit.yaml"
    path.write_text("normal: &n /data\nbank: *n\n")
    with pytest.raises(ConfigError, match=r"^--config \S+ line 1: YAML anchors and aliases .* are not accepted"):
        load_config(FitConfig, path, {})


def test_errors_quote_long_values_clipped_and_list_a_bounded_number(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(FitConfig, None, {"normal": "/a", "bank": "/b", "patchcore.backbone": "v" * 1_000_000})
    message = str(err.value)
    assert "patchcore.backbone" in message and f"(got '{'v' * 199}" in message and "v..." in message
    assert len(message) < 600

    path = tmp_path / "fit.yaml"
    path.write_text("normal: /a\nbank: /b\n" + "".join(f"extra_{i}: {'w' * 10_000}\n" for i in range(100)))
    message = str(pytest.raises(ConfigError, load_config, FitConfig, path, {}).value)
    assert message.count("\n") == 21 and message.endswith("... and 80 more") and len(message) < 6000


def test_unreachable_s3_fails_fast_naming_the_endpoint():
    from tests.helpers.runs import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    storage = Storage(load_config(FitConfig, None, {
        "normal": "s3://b/x", "bank": "s3://b/y", "storage.endpoint_url": endpoint,
        "storage.connect_timeout_s": 1, "storage.max_attempts": 1}).storage)
    with pytest.raises(StorageError, match=rf"normal=s3://b/x: storage unreachable.*endpoint_url={endpoint}"):
        storage.check_reachable("s3://b/x", "normal")


def test_patchsize_must_be_odd_and_the_scoring_k_positive():
    base = {"normal": "/a", "bank": "/b"}
    assert load_config(FitConfig, None, base | {"patchcore.patchsize": 5}).patchcore.patchsize == 5
    with pytest.raises(ConfigError, match=r"patchcore\.patchsize \(--patchsize\): .*must be odd"):
        load_config(FitConfig, None, base | {"patchcore.patchsize": 4}, {"patchcore.patchsize": "--patchsize"})
    with pytest.raises(ConfigError, match=r"patchcore\.anomaly_scorer_num_nn"):
        load_config(FitConfig, None, base | {"patchcore.anomaly_scorer_num_nn": 0})
