"""AnomalyCLIP and InCTRL through jobs.train and jobs.score, with the tiny registered open_clip ViT."""

import numpy as np
import pytest

from pipeline.config import ScoreConfig, StorageSettings, TrainConfig
from pipeline.io.storage import Storage
from pipeline.results.rows import read_rows
from pipeline.score import run_score
from pipeline.train import run_train

TINY = {"clip_arch": "tiny-vit-test", "image_size": 64}
SETTINGS = {
    "anomalyclip": TINY | {"n_ctx": 4, "deep_prompt_depth": 2, "deep_prompt_length": 2, "dpam_start": 2,
                           "feature_layers": [2, 3, 4]},
    "inctrl": TINY | {"shots": 2, "patch_layers": [2, 3, 4], "templates": ["a photo of a {}."]},
}


@pytest.mark.parametrize("detector", ["anomalyclip", "inctrl"])
def test_train_on_aux_folders_then_score(ray_runtime, dataset, tmp_path, detector):
    model = tmp_path / f"{detector}.pt"
    trained = run_train(TrainConfig.model_validate({
        "detector": detector, "aux": str(dataset), "model_out": str(model), "steps": 3, "batch_size": 4,
        detector: SETTINGS[detector], "runtime": {"workers": 1}, "tracking": {"enabled": False}}))
    assert model.is_file() and trained["steps"] == 3 and trained["samples_per_worker"] == [20]
    extra = {"prompts": str(dataset / "train" / "good"), "shots": 2} if detector == "inctrl" else {}
    scored = run_score(ScoreConfig.model_validate({
        "input": str(dataset / "test"), "detector": detector, "model": str(model), "output": str(tmp_path / "out"),
        "run_name": detector, "clip_weights": "none", "runtime": {"workers": 1}, "tracking": {"enabled": False}}
        | extra))
    rows = read_rows(Storage(StorageSettings()), scored["output"], columns=None)
    assert len(rows) == 8 and all(r["status"] == "ok" and np.isfinite(r["score"]) for r in rows)
    assert {r["model_version"] for r in rows} == {trained["version"]} and all(r["heatmap_uri"] for r in rows)


def test_inctrl_needs_prompts_and_clip_detectors_need_aux():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="inctrl needs prompts"):
        load_config(ScoreConfig, None, {"input": "/a", "output": "/b", "detector": "inctrl", "model": "/m.pt"})
    with pytest.raises(ConfigError, match="set aux"):
        load_config(TrainConfig, None, {"detector": "anomalyclip", "model_out": "/m.pt"})


def no_ray(*_: object) -> None:
    raise AssertionError("Ray was started: the check came after work began")


def test_prompts_deeper_than_the_text_tower_fail_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    """Issue 21: ``--clip-arch tiny-vit-test`` with the default prompts failed after 22 s of Ray and data loading."""
    import pipeline.train
    from jobs import train

    monkeypatch.setattr(pipeline.train, "init_ray", no_ray)
    code = train.main(["--detector", "anomalyclip", "--clip-arch", "tiny-vit-test", "--aux", str(dataset),
                       "--model-out", str(tmp_path / "m.pt"), "--no-tracking", "--workers", "1"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: clip_arch=tiny-vit-test has 3 text and 4 vision layers: lower anomalyclip.deep_prompt_depth=9 to 3 "
        "or less; keep anomalyclip.feature_layers=[6, 12, 18, 24] within 1..4 (YAML section anomalyclip:)"]
    assert not (tmp_path / "m.pt").exists()


def test_openai_clip_weights_without_network_name_the_file_to_place(dataset, tmp_path, capsys, monkeypatch):
    """Issue 21: a 1,000-character traceback folded into one line. Now one sentence, before Ray starts."""
    import huggingface_hub.constants

    import pipeline.train
    from jobs import train

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, at once
    monkeypatch.setattr(pipeline.train, "init_ray", no_ray)
    code = train.main(["--detector", "anomalyclip", "--clip-weights", "openai", "--aux", str(dataset),
                       "--model-out", str(tmp_path / "m.pt"), "--no-tracking"])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2, line
    assert line == (
        "error: clip_weights=openai: the openai weights of ViT-L-14-336 are not on this machine and could not be "
        "downloaded; download https://huggingface.co/timm/vit_large_patch14_clip_336.openai"
        "/resolve/main/open_clip_pytorch_model.bin where there is network access and give its path or s3:// URI as "
        "clip_weights (--clip-weights FILE)"), line
