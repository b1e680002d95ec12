"""Like with like: every system scores the same test images, one function computes every AUROC.

The test set of a benchmark folder is every PNG under ``DATA/test``, sorted (``test_images``).
Each system writes a score table (``write_table``): those image paths in that order, one image
score each and one anomaly map each at the scored resolution. ``aurocs`` computes image and pixel
AUROC from a table with the same labels (the parent folder is ``defect``), the same masks
(``ground_truth/defect/NAME_mask.png``, resized nearest to the map size) and the same function
(``pipeline.evaluation.metrics.roc_auc``), so no system is scored on its own split or by its own metric code.

This module is also imported by ``anomalib_patchcore.py`` inside anomalib's virtual environment,
so it needs only numpy and PIL at import time.
"""

from pathlib import Path

import numpy as np
from PIL import Image


def test_images(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "test").rglob("*.png"))


def write_table(path: Path, root: Path, scored: dict[str, tuple[float, np.ndarray]]) -> None:
    """``scored`` maps each image path to (image score, anomaly map); it must cover exactly the test set."""
    images = test_images(root)
    if sorted(scored) != images:
        missing, extra = set(images) - set(scored), set(scored) - set(images)
        raise ValueError(f"score table for {root}: {len(missing)} test images unscored, {len(extra)} extra")
    np.savez(path, images=np.array(images), scores=np.array([scored[i][0] for i in images], np.float64),
             maps=np.stack([np.asarray(scored[i][1], np.float32) for i in images]))


def aurocs(path: Path, root: Path) -> dict[str, float]:
    from pipeline.evaluation.metrics import roc_auc

    table = np.load(path)
    images = [str(i) for i in table["images"]]
    if images != test_images(root):
        raise ValueError(f"{path} does not hold the test set of {root} in order")
    maps = table["maps"]
    labels = np.array([Path(i).parent.name == "defect" for i in images])
    masks = np.zeros(maps.shape, bool)
    for n, image in enumerate(images):
        if labels[n]:
            mask = Image.open(root / "ground_truth" / "defect" / f"{Path(image).stem}_mask.png")
            masks[n] = np.asarray(mask.resize(maps.shape[:0:-1], Image.NEAREST)) > 127
    return {"image_auroc": roc_auc(labels, table["scores"]), "pixel_auroc": roc_auc(masks, maps),
            "n_test": len(images), "n_defect": int(labels.sum())}
