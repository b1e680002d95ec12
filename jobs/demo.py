"""End to end on built-in defaults: make a small data set, fit a bank, score an archive.

``python -m jobs.demo [--workdir demo-output]``. Local Ray, local folders, MLflow in
``{workdir}/mlflow.db``, faiss on CPU. The backbone is randomly initialised (no weights can be
downloaded here), so the scores show the pipeline working, not PatchCore's quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.cli import run_main
from pipeline.config import FitConfig, ScoreConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo-output")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    def job() -> dict:
        from pipeline.demo_data import make_archive, make_dataset
        from pipeline.detectors.patchcore.fit import run_fit
        from pipeline.score import run_score

        work = Path(args.workdir).resolve()
        data = make_dataset(work / "data")
        make_archive(data, work / "archive")
        common = {"runtime": {"workers": args.workers}, "tracking": {"tracking_uri": f"sqlite:///{work}/mlflow.db"}}
        fit = run_fit(FitConfig.model_validate(
            {"normal": str(data / "train" / "good"), "bank": str(work / "bank"),
             "patchcore": {"image_size": 128}} | common))
        score = run_score(ScoreConfig.model_validate(
            {"input": str(work / "archive"), "bank": str(work / "bank"), "output": str(work / "results"),
             "run_name": f"demo-{fit['version']}", "maps": True} | common))
        from jobs.evaluate import _run as run_evaluate
        from pipeline.config import EvaluateConfig

        frames = work / "video-labels.csv"  # make_archive draws the defect on frames 12-19
        frames.write_text("source,frame_index,label\n" + "".join(
            f"line-camera.mp4,{i},{int(12 <= i < 20)}\n" for i in range(30)))
        evaluation = run_evaluate(EvaluateConfig.model_validate(
            {"output": score["output"], "labels": f"{data},{frames}", "tracking": common["tracking"]}))
        print(f"\nbank:      {fit['bank']}/{fit['version']}  "
              f"({fit['n_bank']} vectors, fit {fit['seconds']['fit']:.1f} s)")
        print(f"results:   {score['output']}/scores/*.parquet  ({score['n_ok']} ok, {score['n_errors']} error rows, "
              f"{score['n_anomalous']} above threshold)")
        print(f"heatmaps:  {score['output']}/heatmaps/")
        print(f"videos:    {score['output']}/videos.json  ({score.get('n_anomalous_segments', 0)} anomalous segments)")
        print(f"mlflow:    mlflow ui --backend-store-uri sqlite:///{work}/mlflow.db")
        print(f"metrics:   image AUROC {evaluation['image_auroc']:.3f}, AUPRO {evaluation['aupro']:.3f}, "
              f"frame AUC {evaluation['frame_auc']:.3f}  ({score['output']}/evaluation.json)")
        print(f"report:    {evaluation['report']}\n")
        return {"fit": {k: v for k, v in fit.items() if k != "errors"}, "score": score,
                "evaluation": {k: v for k, v in evaluation.items() if k in ("image_auroc", "aupro", "frame_auc",
                                                                             "report")}}

    code = run_main(job)
    report = Path(args.workdir).resolve() / "results"
    reports = sorted(report.glob("demo-*/evaluation/report.html"), key=lambda p: p.stat().st_mtime)
    if code == 0 and reports:
        print(f"report: {reports[-1]}")  # the last line: open it in a browser
    return code


if __name__ == "__main__":
    sys.exit(main())
