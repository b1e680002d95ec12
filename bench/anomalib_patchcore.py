"""anomalib 2.x PatchCore on the benchmark folder; runs in anomalib's own virtual environment.

Usage: python anomalib_patchcore.py DATA_ROOT WEIGHTS.pt IMAGE_SIZE OUT.json
Same backbone (resnet18, layer2+layer3), same weights file, coreset ratio 0.1, CPU.
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    root, weights, size, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    torch.set_num_threads(2)
    t_import = time.perf_counter()
    from anomalib.data import Folder, PredictDataset
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    import_s = time.perf_counter() - t_import
    model = Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False,
                      coreset_sampling_ratio=0.1, num_neighbors=9,
                      pre_processor=Patchcore.configure_pre_processor(image_size=(size, size)), visualizer=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, _ = model.model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
    assert not missing, missing
    datamodule = Folder(name="bench", root=root, normal_dir="train/good", abnormal_dir="test/defect",
                        normal_test_dir="test/good", mask_dir="ground_truth/defect", train_batch_size=32,
                        eval_batch_size=32, num_workers=0)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(out.parent / "anomalib-run"),
                    enable_progress_bar=False)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    (metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    test_images = sorted((root / "test").rglob("*.png"))
    start = time.perf_counter()
    predictions = engine.predict(model=model, dataset=PredictDataset(path=root / "test", image_size=(size, size)))
    predict_s = time.perf_counter() - start
    n_pred = sum(len(p.pred_score) for p in predictions)
    assert n_pred == len(test_images), (n_pred, len(test_images))
    out.write_text(json.dumps({
        "system": "anomalib 2.7.0", "import_s": import_s, "fit_s": fit_s,
        "n_bank": int(model.model.memory_bank.shape[0]),
        "score_images_per_s": n_pred / predict_s, "image_auroc": float(metrics["image_AUROC"]),
        "pixel_auroc": float(metrics["pixel_AUROC"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
