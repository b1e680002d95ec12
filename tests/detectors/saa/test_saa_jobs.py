"""SAA+ through jobs.score, end to end: images, a video and a broken file on local Ray; weights and prompts
from S3 (moto) with MLflow. Tiny random GroundingDINO and SAM: the scores mean nothing, the plumbing does."""

import io
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import score
from pipeline.config import ScoreConfig, StorageSettings
from pipeline.demo_data import make_video
from pipeline.detectors.saa.prompts import load_prompts, packaged_text
from pipeline.errors import ConfigError
from pipeline.io.storage import Storage
from pipeline.results.rows import read_rows
from pipeline.score import run_score
from tests.helpers.runs import free_port, s3_buckets  # noqa: F401 - keeps conftest's environment set-up

FAST = {"saliency_backbone": "resnet18", "saliency_size": 64, "multi_saliency_size": 64, "gdino_size": 64}


def _archive(dataset: Path, root: Path) -> Path:
    for sub in ("good", "defect"):
        (root / "imgs" / sub).mkdir(parents=True)
        for image in sorted((dataset / "test" / sub).iterdir())[:2]:
            shutil.copy(image, root / "imgs" / sub / image.name)
    make_video(root / "cam.mp4", n_frames=5, size=48, seed=4)
    (root / "broken.png").write_bytes(b"")
    return root


def _summary(stdout: str) -> dict:
    """The summary JSON the job prints last (log lines may come before it, when logging goes to stdout)."""
    return json.loads(stdout[stdout.rindex("\n{\n") + 1:] if not stdout.startswith("{\n") else stdout)


def test_score_images_and_a_video_through_the_cli_on_local_ray(ray_runtime, dataset, tmp_path, capsys):
    archive = _archive(dataset, tmp_path / "archive")
    config = tmp_path / "saa.yaml"
    config.write_text(yaml.safe_dump({"saa": FAST, "images_per_unit": 2}))
    out = tmp_path / "out"
    argv = ["--config", str(config), "--detector", "saa", "--input", str(archive), "--output", str(out),
            "--run-name", "day-1", "--gdino-weights", "none", "--sam-weights", "none", "--workers", "2",
            "--no-tracking"]
    assert score.main(argv) == 0
    summary = _summary(capsys.readouterr().out)
    rows = read_rows(Storage(StorageSettings()), summary["output"], columns=None)
    assert summary["n_inputs"] == len(rows) == 4 + 5 + 1
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 9 and sorted(r["frame_index"] for r in ok if r["frame_index"] is not None) == list(range(5))
    assert [r["source_uri"] for r in rows if r["status"] == "error"] == [str(archive / "broken.png")]
    assert all(np.isfinite(r["score"]) and r["score"] >= 0 for r in ok)
    assert all(Path(r["heatmap_uri"]).is_file() for r in ok if r["frame_index"] is None)
    digest = load_prompts(packaged_text(), None, None).digest()
    version = (f"gdino=random:tiny-test:seed=0;sam=random:tiny-test:seed=0;saliency=random:resnet18:seed=0;"
               f"prompts={digest}")
    assert summary["model_version"] == version and {r["model_version"] for r in rows} == {version}
    assert summary["detector"] == "saa" and summary["saa_prompts_digest"] == digest

    # a resume with another prompt set is refused before any work; the same one finds everything done
    assert score.main(argv + ["--product", "screw"]) == 2
    assert "an earlier attempt used model_uri=" in capsys.readouterr().err
    assert score.main(argv) == 0
    assert _summary(capsys.readouterr().out)["n_units_skipped_as_complete"] == summary["n_units"]


@pytest.fixture()
def s3(s3_endpoint):
    fs = s3_buckets(s3_endpoint, "weights", "configs", "archive", "results")
    return fs


def test_weights_and_prompts_from_s3_with_mlflow(ray_runtime, dataset, s3, s3_endpoint, tmp_path):
    from pipeline.detectors.saa.models import folder_fingerprint, load_gdino, load_sam

    gdino, tokenizer = load_gdino(None, "tiny-test", 7, "saa.gdino_weights")
    gdino.save_pretrained(tmp_path / "gdino")
    tokenizer.save_pretrained(tmp_path / "gdino")
    load_sam(None, "tiny-test", 7, "saa.sam_weights").save_pretrained(tmp_path / "sam")
    s3.put(str(tmp_path / "gdino") + "/", "weights/gdino-t/", recursive=True)
    s3.put(str(tmp_path / "sam") + "/", "weights/sam-t/", recursive=True)
    prompts = "generic: {object: part, captions: ['defect on {name}']}\nproducts: {widget: {object: widget, " \
              "defects: ['dent. burr.'], instances: 2, max_anomalies: 2}}\n"
    s3.pipe("configs/prompts.yaml", prompts.encode())
    s3.put(str(dataset / "test" / "defect") + "/", "archive/day/", recursive=True)
    storage = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    tracking = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    cache = tmp_path / "cache"
    saa = FAST | {"gdino_weights": "s3://weights/gdino-t", "sam_weights": "s3://weights/sam-t",
                  "prompts_config": "s3://configs/prompts.yaml", "weights_cache": str(cache)}

    def cfg(**extra):
        return ScoreConfig.model_validate({
            "input": "s3://archive/day", "output": "s3://results/line-3", "run_name": "n1", "detector": "saa",
            "saa": saa | extra, "storage": storage, "runtime": {"workers": 1}, "tracking": tracking})

    with pytest.raises(ConfigError, match="product 'gizmo' is not in saa.prompts_config"):
        run_score(cfg(product="gizmo"))
    assert not s3.exists("results/line-3/n1")  # refused before any work

    summary = run_score(cfg(product="widget"))
    parts = s3.glob("results/line-3/n1/scores/part-*.parquet")
    rows = [r for p in parts for r in pq.read_table(io.BytesIO(s3.cat(p))).to_pylist()]
    assert len(rows) == summary["n_inputs"] == 4 and all(r["status"] == "ok" for r in rows)
    assert all(s3.exists(r["heatmap_uri"]) for r in rows)
    # the copy in the cache has the same content fingerprint as the folder it was uploaded from
    gdino_fp, sam_fp = folder_fingerprint(tmp_path / "gdino"), folder_fingerprint(tmp_path / "sam")
    digest = load_prompts(prompts, "x", "widget").digest()
    assert summary["model_version"] == (f"gdino={gdino_fp[:23]};sam={sam_fp[:23]};saliency=random:resnet18:seed=0;"
                                        f"prompts={digest}")
    assert len(list(cache.glob("*/.manifest.json"))) == 2

    client = mlflow.MlflowClient(tracking["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["saa.gdino_fingerprint"] == gdino_fp and run.data.params["saa.product"] == "widget"
    assert run.data.params["saa.sam_fingerprint"] == sam_fp and run.data.metrics["ok"] == 4
    assert {"summary.json", "saa.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
