"""anomalib 2.x PatchCore on a benchmark folder; runs in anomalib's own virtual environment.

Usage: python anomalib_patchcore.py DATA_ROOT WEIGHTS.pt IMAGE_SIZE OUT.json
Same backbone (resnet18, layer2+layer3), same weights file, coreset ratio 0.1, CPU, 2 threads.

Same images as ours: ``Folder`` trains on every image in DATA_ROOT/train/good and is given no
test or validation split (``test_split_mode="none"``, ``val_split_mode="none"``: its defaults move
a random, unseeded half of the test images into validation, and without test folders they would
move normal training images into the test set); ``engine.fit`` gets the training loader alone.
The fitted model then predicts every image under DATA_ROOT/test, and its raw image scores and
anomaly maps go to OUT.npz, a score table (``score_table.py``) from which the driver computes the
AUROCs with the same code as for ours. Post-processing is off: anomalib's min-max normalisation
needs validation statistics and clamps scores to [0, 1], which can tie them. anomalib's PatchCore
always re-weights the image score (paper Eq. 7, ``num_neighbors=9``).

OUT.json holds the timings: imports, ``engine.fit`` (features + coreset), the coreset alone and
its iterations per second, ``engine.predict`` throughput over the test set (second pass), the
Unix time at which the fit ended (the driver turns it into whole-process time to the end of the
fit) and peak RSS.
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch
from score_table import write_table


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
                      pre_processor=Patchcore.configure_pre_processor(image_size=(size, size)),
                      post_processor=False, evaluator=False, visualizer=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, _ = model.model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
    assert not missing, missing
    coreset = {}
    subsample = model.model.subsample_embedding

    def timed_subsample(*args, **kwargs) -> None:
        start = time.perf_counter()
        coreset["n_patches"] = sum(len(e) for e in model.model.embedding_store)
        subsample(*args, **kwargs)
        coreset["s"] = time.perf_counter() - start

    model.model.subsample_embedding = timed_subsample
    datamodule = Folder(name="bench", root=root, normal_dir="train/good", test_split_mode="none",
                        val_split_mode="none", train_batch_size=32, eval_batch_size=32, num_workers=0)
    datamodule.setup()
    n_train = len(list((root / "train" / "good").glob("*.png")))
    assert len(datamodule.train_data) == n_train, (len(datamodule.train_data), n_train)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(out.parent / "anomalib-run"),
                    enable_progress_bar=False)
    start = time.perf_counter()
    engine.fit(model=model, train_dataloaders=datamodule.train_dataloader())
    fit_s = time.perf_counter() - start
    fit_end_unix = time.time()
    n_bank = int(model.model.memory_bank.shape[0])
    dataset = PredictDataset(path=root / "test", image_size=(size, size))
    predictions = engine.predict(model=model, dataset=dataset)  # also the warm-up pass, as for ours
    start = time.perf_counter()
    engine.predict(model=model, dataset=dataset)
    predict_s = time.perf_counter() - start
    scored = {}
    for batch in predictions:
        for path, score, amap in zip(batch.image_path, batch.pred_score, batch.anomaly_map, strict=True):
            scored[str(Path(path).resolve())] = (float(score), amap.squeeze().numpy())
    write_table(out.with_suffix(".npz"), root, scored)
    out.write_text(json.dumps({
        "system": "anomalib 2.7.0", "import_s": import_s, "fit_s": fit_s, "fit_coreset_s": coreset["s"],
        "fit_features_s": fit_s - coreset["s"], "n_patches": coreset["n_patches"], "n_bank": n_bank,
        "coreset_iterations_per_s": (n_bank - 1) / coreset["s"], "fit_end_unix": fit_end_unix,
        "score_images_per_s": len(scored) / predict_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
