"""Run the official PatchCore code (amazon-science/patchcore-inspection) on tiny seeded inputs and
store what it computes, for ``tests/test_official_patchcore.py``.

    python tests/data/official/patchcore/make_reference.py /path/to/patchcore-inspection

The backbone is torchvision's resnet18 with seeded random weights (``torch.manual_seed(SEED)``
then ``resnet18(weights=None)``): too big to store, regenerated bit for bit by the test (the
stored sha256 checks that). Everything here runs the official modules unchanged, on the CPU.
Per case it writes ``<case>/`` (the official ``save_to_path`` folder: ``patchcore_params.pkl`` +
``nnscorer_search_index.faiss``) and ``<case>.npz`` (inputs and outputs).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

ARCH = "resnet18"
SEED = 0
LAYERS = ["layer2", "layer3"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# name: (image side, pretrain_embed_dimension, target_embed_dimension, patchsize, anomaly_scorer_num_nn)
CASES = {"ps3_nn1": (64, 96, 64, 3, 1), "ps5_nn3": (72, 80, 48, 5, 3)}
N_TRAIN, N_TEST = 4, 3


def seeded_backbone() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return getattr(torchvision.models, ARCH)(weights=None)


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def images(count: int, side: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields in 0..1 (already preprocessed: what the model sees before normalising)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)


def run_case(official: Path, out: Path, name: str, case: tuple[int, int, int, int, int]) -> None:
    import patchcore.common
    import patchcore.patchcore
    import patchcore.sampler

    side, pretrain_dim, target_dim, patchsize, num_nn = case
    backbone = seeded_backbone()
    backbone.name, backbone.seed = ARCH, None
    sha = weights_sha256(backbone)
    model = patchcore.patchcore.PatchCore(torch.device("cpu"))
    model.load(backbone=backbone, layers_to_extract_from=LAYERS, device=torch.device("cpu"),
               input_shape=(3, side, side), pretrain_embed_dimension=pretrain_dim,
               target_embed_dimension=target_dim, patchsize=patchsize, anomaly_score_num_nn=num_nn,
               featuresampler=patchcore.sampler.IdentitySampler(), nn_method=patchcore.common.FaissNN(False, 1))
    train, test = images(N_TRAIN, side, 1), images(N_TEST, side, 2)
    model.fit([(train - MEAN) / STD])
    normalised = (test - MEAN) / STD
    with torch.no_grad():
        taps = model.forward_modules["feature_aggregator"](normalised)
        taps = {layer: taps[layer].clone().numpy() for layer in LAYERS}
    features, _ = model._embed(normalised, provide_patch_shapes=True)
    patch_scores = model.anomaly_scorer.predict([np.asarray(features)])[0]
    scores, masks = model.predict(normalised)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save_to_path(str(folder))
    np.savez_compressed(
        out / f"{name}.npz", test_images=test.numpy(), taps_layer2=taps["layer2"], taps_layer3=taps["layer3"],
        features=np.asarray(features, dtype=np.float32), patch_scores=np.asarray(patch_scores, dtype=np.float32),
        image_scores=np.asarray(scores, dtype=np.float32), maps=np.asarray(masks, dtype=np.float32),
        weights_sha256=np.array(sha), arch=np.array(ARCH), seed=np.array(SEED))
    print(f"{name}: bank {model.anomaly_scorer.nn_method.search_index.ntotal} x {target_dim}, "
          f"image scores {np.round(np.asarray(scores), 4).tolist()}, weights sha256 {sha[:16]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official", type=Path, help="checkout of amazon-science/patchcore-inspection")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.official / "src"))
    torch.set_num_threads(1)
    assert weights_sha256(seeded_backbone()) == weights_sha256(seeded_backbone()), "seeded init is not deterministic"
    for name, case in CASES.items():
        run_case(args.official, args.out, name, case)


if __name__ == "__main__":
    main()
