"""jobs.evaluate on synthetic runs (exact numbers) and on one real run scored with --maps."""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.evaluate import main as evaluate_main
from pipeline.evaluation import metrics
from tests.helpers.evaluation_runs import MAP, evaluate, sinks_storage, write_run
from tests.helpers.runs import small_patchcore


def expected(dataset: Path, run: Path):
    from pipeline.results.rows import read_rows
    from pipeline.results.sink import ROW_SCHEMA  # noqa: F401 - the run is read back through the schema

    rows = [r for r in read_rows(sinks_storage(), str(run), columns=None) if r["status"] == "ok"
            and r["frame_index"] is None]
    y = np.array(["/defect/" in r["source_uri"] for r in rows], int)
    s = np.array([r["score"] for r in rows])
    return y, s, rows


def test_folder_labels_give_image_and_pixel_metrics_equal_to_references(dataset, tmp_path, capsys):
    from sklearn.metrics import average_precision_score, roc_auc_score

    run = write_run(dataset, tmp_path, scores=[0.2, 0.9, 0.6, 0.4, 0.3, 0.7, 0.35, 0.45])
    frames = tmp_path / "frames.csv"
    frames.write_text("source,frame_index,label\n" + "".join(f"cam1.mp4,{f},{int(3 <= f <= 5)}\n" for f in range(10)))
    code, result = evaluate(run, str(dataset), str(frames))
    assert code == 0, capsys.readouterr().err
    y, s, rows = expected(dataset, run)
    assert result["n_images"] == 8 and result["n_anomalous_images"] == 4
    assert result["image_auroc"] == pytest.approx(roc_auc_score(y, s))
    assert result["image_ap"] == pytest.approx(average_precision_score(y, s))
    assert (result["image_f1_max"], result["image_f1_threshold"]) == pytest.approx(metrics.f1_max(y, s))
    flagged = s > 0.5
    assert result["confusion_at_run_threshold"] == {"tp": int((flagged & (y == 1)).sum()),
                                                    "fp": int((flagged & (y == 0)).sum()),
                                                    "tn": int((~flagged & (y == 0)).sum()),
                                                    "fn": int((~flagged & (y == 1)).sum())}
    assert set(result["groups"]) == {"good", "defect"} and result["groups"]["defect"]["n"] == 4
    # maps light up exactly the (resized) masks, shifted by a per-image offset: pixel AUROC from sklearn
    masks = [metrics.resize_nearest(np.zeros((96, 96), bool) if "/good/" in r["source_uri"] else
                                    np.asarray(Image.open(dataset / "ground_truth" / "defect" /
                                                          (Path(r["source_uri"]).stem + "_mask.png"))) > 127,
                                    (MAP, MAP)) for r in rows]
    maps = [np.load(r["map_uri"]).astype(np.float32) for r in rows]
    pixel_y = np.concatenate([m.ravel() for m in masks])
    pixel_s = np.concatenate([m.ravel() for m in maps])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(pixel_y, pixel_s))
    assert result["aupro"] == pytest.approx(metrics.aupro(masks, maps)) and result["aupro"] > 0.5
    assert result["n_pixel_images"] == 8
    # video: frame AUC and segments (4-6) against the labelled event (3-5): 1 of 1 events hit, 1 of 2 segments
    assert result["n_frames"] == 10 and result["n_positive"] == 3
    assert result["frame_auc"] == pytest.approx(roc_auc_score([int(3 <= f <= 5) for f in range(10)],
                                                              [1.0 if 4 <= f <= 6 else 0.1 * (f % 3)
                                                               for f in range(10)]))
    assert result["segment_event_hit_rate"] == 1.0 and result["segment_precision"] == 0.5
    assert result["n_unlabelled_images"] == 0 and result["warnings"] == [] and result["errors"] == []
    assert (run / "evaluation" / "report.html").stat().st_size > 10_000


def test_labels_matching_nothing_exit_2_with_a_message(dataset, tmp_path, capsys):
    run = write_run(dataset, tmp_path)
    other = tmp_path / "other.csv"
    other.write_text("source,label\nnowhere/a.png,1\nnowhere/b.png,0\n")
    code, result = evaluate(run, str(other))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "none of the 2 image labels matches" in err
    assert result["errors"] and "image_auroc" not in result
    assert (run / "evaluation" / "report.html").exists()


def test_one_class_only_gives_null_and_exit_2_not_nan(dataset, tmp_path, capsys):
    run = write_run(dataset, tmp_path)
    only_good = tmp_path / "good.csv"
    only_good.write_text("source,label\n" + "".join(f"good/{i:04d}.png,0\n" for i in range(4)))
    code, result = evaluate(run, str(only_good))
    err = capsys.readouterr().err
    assert code == 2 and "image_auroc is undefined" in err
    assert result["image_auroc"] is None and result["image_ap"] is None
    assert any("image_auroc: undefined" in w for w in result["warnings"])
    assert "NaN" not in (run / "evaluation.json").read_text()
    assert any("4 scored images have no label" in w for w in result["warnings"])


def test_masks_of_another_size_are_left_out_with_a_warning(dataset, tmp_path):
    import shutil

    labels = tmp_path / "labels"
    shutil.copytree(dataset, labels)
    bad = labels / "ground_truth" / "defect" / "0000_mask.png"
    Image.open(bad).resize((50, 40)).save(bad)
    run = write_run(dataset, tmp_path)
    code, result = evaluate(run, str(labels))
    assert code == 0 and result["n_pixel_images"] == 7
    assert any("1 masks of another size" in w and "50x40" in w for w in result["warnings"])


def test_without_maps_pixel_metrics_are_null_with_a_warning(dataset, tmp_path):
    run = write_run(dataset, tmp_path, maps=False)
    code, result = evaluate(run, str(dataset))
    assert code == 0 and result["pixel_auroc"] is None and result["aupro"] is None
    assert any("--maps" in w for w in result["warnings"])


def test_unusable_labels_and_no_labels(dataset, tmp_path, capsys):
    run = write_run(dataset, tmp_path)
    broken = tmp_path / "broken.csv"
    broken.write_text("path,score\na,1\n")
    assert evaluate_main(["--output", str(run), "--labels", str(broken), "--no-tracking"]) == 2
    assert "need a label column" in capsys.readouterr().err
    code, result = evaluate(run)  # no labels: the report alone
    assert code == 0 and result["errors"] == [] and "image_auroc" not in result
    html = (run / "evaluation" / "report.html").read_text()
    assert "images per source folder" in html and "cam1.mp4" in html and "http" not in html.replace(
        "http://www.w3.org", "")


def test_real_run_scored_with_maps(ray_runtime, dataset, tmp_path, capsys):
    """fit + score --maps on the real pipeline; the maps are float16 at the scored resolution; evaluate reads them."""
    import mlflow

    from jobs.score import main as score_main
    from pipeline.config import FitConfig
    from pipeline.detectors.patchcore.fit import run_fit

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    run_fit(FitConfig.model_validate({"normal": str(dataset / "train" / "good"), "bank": str(tmp_path / "bank"),
                                      "patchcore": small_patchcore(), "runtime": {"workers": 2},
                                      "tracking": {"tracking_uri": tracking}}))
    assert score_main(["--input", str(dataset / "test"), "--bank", str(tmp_path / "bank"), "--output",
                       str(tmp_path / "out"), "--run-name", "r", "--maps", "--workers", "2",
                       "--tracking-uri", tracking]) == 0
    from pipeline.results.rows import read_rows

    rows = read_rows(sinks_storage(), str(tmp_path / "out" / "r"), columns=None)
    amap = np.load(rows[0]["map_uri"])
    assert amap.dtype == np.float16 and amap.shape == (64, 64) and len(rows) == 8
    capsys.readouterr()
    assert evaluate_main(["--output", str(tmp_path / "out" / "r"), "--labels", str(dataset),
                          "--tracking-uri", tracking]) == 0
    result = json.loads((tmp_path / "out" / "r" / "evaluation.json").read_text())
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro"):
        assert 0 <= result[key] <= 1, key
    client = mlflow.MlflowClient(tracking)
    scoring = json.loads((tmp_path / "out" / "r" / "tracking.json").read_text())["mlflow_run_id"]
    printed = json.loads(capsys.readouterr().out)
    ev = client.get_run(printed["mlflow_run_id"])
    assert ev.data.tags["scoring_run_id"] == scoring
    # the bank's random backbone, recorded by jobs.score in summary.json, heads the evaluation run and its report
    assert ev.data.tags["random_weights"] == "true" and "Random weights" in ev.data.tags["mlflow.note.content"]
    assert result["random_weights"] == [f"the resnet18 backbone of bank {tmp_path / 'bank' / 'v0001'} "
                                        f"(patchcore.weights=none)"]
    report = (tmp_path / "out" / "r" / "evaluation" / "report.html").read_text()
    assert report.index('id="random-weights"') < report.index('id="summary"')
    assert ev.data.metrics["aupro"] == pytest.approx(result["aupro"])
    assert "evaluation/report.html" in [a.path for a in client.list_artifacts(ev.info.run_id, "evaluation")]


def _files(run: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``run``: its modification time (ns) and sha256."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_mlflow_down_fails_first_in_one_line_and_changes_nothing(dataset, tmp_path):
    """Issue 21: it ran 250 s, rewrote evaluation.json and report.html, then died with a raw MlflowException."""
    run = write_run(dataset, tmp_path)
    assert evaluate(run, str(dataset))[0] == 0
    before = _files(run)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--output", str(run), "--labels", str(dataset),
                           "--tracking-uri", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: tracking.tracking_uri=http://127.0.0.1:1: MLflow store unreachable"), line
    assert seconds < 30, f"{seconds:.1f} s"
    assert _files(run) == before


def test_evaluation_without_labels_keeps_a_labelled_one_unless_told_to_replace(dataset, tmp_path, capsys):
    run = write_run(dataset, tmp_path)
    code, labelled = evaluate(run, str(dataset))
    assert code == 0 and labelled["image_auroc"] is not None
    capsys.readouterr()
    before = _files(run)
    assert evaluate_main(["--output", str(run), "--no-tracking"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {run}/evaluation.json holds an evaluation with labels={dataset}; give --labels {dataset} to update "
        f"it, or --replace to replace it with a report without metrics"]
    assert _files(run) == before
    code, replaced = evaluate(run, extra=["--replace"])
    assert code == 0 and replaced["labels"] is None and "image_auroc" not in replaced
    code, again = evaluate(run)  # an unlabelled evaluation over an unlabelled one needs no flag
    assert code == 0
