"""Reference outputs of the official AnomalyCLIP code on a tiny seeded CLIP (see README.md in this folder).

Run OUTSIDE this repository's environment, with a checkout of github.com/zqhang/AnomalyCLIP:

    python make_reference.py --official /path/to/AnomalyCLIP --name fixed --features 2 3 5 6
    python make_reference.py --official /path/to/AnomalyCLIP-at-2b70f77 --name released --features 3 4 5 6

The first run writes the shared inputs (``clip_tiny.pt``, ``prompt_learner.pth``, ``inputs.pt``); later runs load
them, so every reference is computed from the same weights and images. The forward pass below is the one of the
official ``test.py`` (lines from ``prompt_learner(cls_id=None)`` to ``gaussian_filter``), one image at a time as its
data loader (``batch_size=1``) feeds it; only the data set loop and the metrics are left out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from scipy.ndimage import gaussian_filter

HERE = Path(__file__).resolve().parent
EMBED_DIM, WIDTH, VISION_LAYERS, PATCH, NATIVE_GRID, TEXT_LAYERS, CONTEXT, VOCAB = 32, 64, 6, 8, 4, 3, 77, 49408
DESIGN = {"Prompt_length": 4, "learnabel_text_embedding_depth": 3, "learnabel_text_embedding_length": 2}
DPAM_LAYER = 5  # official meaning: the last DPAM_LAYER - 1 blocks (3..6 of 6) get the DPAM path
IMAGE_SIZE, SIGMA, N_IMAGES = 48, 4, 2


def tiny_clip_state(lib, tokenize) -> dict:
    """An OpenAI-layout CLIP state_dict: the official ``CLIP`` at a seeded init, then every LayerNorm and bias
    perturbed (they start at 1/0, which would hide a missing or misplaced one). The token embedding keeps only the
    rows the prompts use (the rest zero) so the stored file stays small."""
    torch.manual_seed(0)
    model = lib.CLIP.CLIP(EMBED_DIM, PATCH * NATIVE_GRID, VISION_LAYERS, WIDTH, PATCH, CONTEXT, VOCAB, WIDTH,
                          WIDTH // 64, TEXT_LAYERS)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for name, value in state.items():
        if "ln_" in name and name.endswith("weight"):
            state[name] = 1 + 0.2 * torch.randn(value.shape, generator=g)
        elif name.endswith("bias"):
            state[name] = 0.05 * torch.randn(value.shape, generator=g)
    placeholder = " ".join(["X"] * DESIGN["Prompt_length"])
    ids = tokenize([f"{placeholder} object.", f"{placeholder} damaged object."]).long().unique()
    rows = state["token_embedding.weight"][ids]
    state["token_embedding.weight"] = torch.zeros_like(state["token_embedding.weight"])
    state["token_embedding.weight"][ids] = rows
    return state


def stored_clip(state: dict) -> dict:
    """The state_dict with the token embedding as (ids, rows): what ``clip_tiny.pt`` holds."""
    table = state["token_embedding.weight"]
    ids = table.abs().sum(1).nonzero()[:, 0]
    rest = {k: v for k, v in state.items() if k != "token_embedding.weight"}
    return {"state_dict": rest, "token_ids": ids, "token_rows": table[ids].clone(), "vocab_size": table.shape[0]}


def full_clip(stored: dict) -> dict:
    table = torch.zeros(stored["vocab_size"], stored["token_rows"].shape[1])
    table[stored["token_ids"]] = stored["token_rows"]
    return {**stored["state_dict"], "token_embedding.weight": table}


def torchscript_clip(lib, tokenize, state: dict, path: Path) -> None:
    """Save the weights as OpenAI's released CLIP files are: a traced official ``CLIP`` whose state_dict also holds
    ``input_resolution``, ``context_length`` and ``vocab_size`` (the official ``build_model`` drops them). The
    official loader's state_dict fallback cannot read a plain ``torch.save`` file (it reads on from where the
    failed ``torch.jit.load`` left the file), so the TorchScript container is the one it really supports."""
    model = lib.CLIP.CLIP(EMBED_DIM, PATCH * NATIVE_GRID, VISION_LAYERS, WIDTH, PATCH, CONTEXT, VOCAB, WIDTH,
                          WIDTH // 64, TEXT_LAYERS)
    model.load_state_dict(state)
    for name, value in (("input_resolution", PATCH * NATIVE_GRID), ("context_length", CONTEXT), ("vocab_size", VOCAB)):
        model.__dict__.pop(name, None)  # a plain int attribute of the official CLIP; OpenAI's files hold tensors
        model.register_buffer(name, torch.tensor(value))
    traced = torch.jit.trace_module(model.eval(), {"encode_text": tokenize(["a photo"]).long()}, check_trace=False)
    torch.jit.save(traced, str(path))  # the archive holds every parameter of the module, used by the trace or not


def inputs() -> torch.Tensor:
    """``[N,3,S,S]`` images in 0..1 (already resized: preprocessing is not under test), a bright square in one."""
    g = torch.Generator().manual_seed(2)
    images = torch.nn.functional.avg_pool2d(0.3 + 0.4 * torch.rand(N_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
                                            3, 1, 1)
    images[1, :, 10:26, 20:36] = 0.95
    return images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", type=Path, required=True, help="checkout of github.com/zqhang/AnomalyCLIP")
    parser.add_argument("--name", required=True, help="reference_<name>.pt")
    parser.add_argument("--features", type=int, nargs="+", required=True, help="official features_list")
    args = parser.parse_args()
    sys.path.insert(0, str(args.official))
    import AnomalyCLIP_lib
    from AnomalyCLIP_lib.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from prompt_ensemble import AnomalyCLIP_PromptLearner, tokenize

    clip_file, learner_file, inputs_file = HERE / "clip_tiny.pt", HERE / "prompt_learner.pth", HERE / "inputs.pt"
    if not clip_file.exists():
        torch.save(stored_clip(tiny_clip_state(AnomalyCLIP_lib, tokenize)), clip_file)
        torch.save({"images": inputs()}, inputs_file)
    with tempfile.TemporaryDirectory() as tmp:  # the official loader takes a TorchScript file, as OpenAI's
        torchscript_clip(AnomalyCLIP_lib, tokenize, full_clip(torch.load(clip_file)), Path(tmp) / "clip.pt")
        model, _ = AnomalyCLIP_lib.load(str(Path(tmp) / "clip.pt"), device="cpu", design_details=DESIGN)
    model.eval()

    torch.manual_seed(3)
    prompt_learner = AnomalyCLIP_PromptLearner(model.to("cpu"), DESIGN)
    if learner_file.exists():
        prompt_learner.load_state_dict(torch.load(learner_file)["prompt_learner"])
    else:  # the released checkpoint format: {"prompt_learner": state_dict}
        torch.save({"prompt_learner": prompt_learner.state_dict()}, learner_file)
    model.visual.DAPM_replace(DPAM_layer=DPAM_LAYER)

    # --- official test.py, from here on
    prompts, tokenized_prompts, compound_prompts_text = prompt_learner(cls_id=None)
    text_features = model.encode_text_learn(prompts, tokenized_prompts, compound_prompts_text).float()
    text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)

    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    out = {"image_features": [], "similarity_maps": [], "image_scores": [], "pixel_maps": []}
    for image in torch.load(inputs_file)["images"]:
        image = (image.unsqueeze(0) - mean) / std
        with torch.no_grad():
            image_features, patch_features = model.encode_image(image, args.features, DPAM_layer=DPAM_LAYER)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text_probs = image_features @ text_features.permute(0, 2, 1)
            text_probs = (text_probs / 0.07).softmax(-1)
            text_probs = text_probs[:, 0, 1]
            anomaly_map_list, similarity_maps = [], []
            for patch_feature in patch_features:
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], IMAGE_SIZE)
                anomaly_map = (similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0
                anomaly_map_list.append(anomaly_map)
                similarity_maps.append(similarity_map.permute(0, 3, 1, 2)[0])
            anomaly_map = torch.stack(anomaly_map_list).sum(dim=0)
            anomaly_map = torch.stack([torch.from_numpy(gaussian_filter(i, sigma=SIGMA))
                                       for i in anomaly_map.detach().cpu()], dim=0)
        out["image_features"].append(image_features[0])
        out["similarity_maps"].append(torch.stack(similarity_maps))
        out["image_scores"].append(text_probs[0])
        out["pixel_maps"].append(anomaly_map[0])
    # --- end of test.py
    reference = {k: torch.stack(v) for k, v in out.items()}
    reference["similarity_maps"] = reference["similarity_maps"].transpose(0, 1).contiguous()  # [layer, N, 2, S, S]
    reference["text_features"] = text_features[0].clone()
    reference["settings"] = {"features_list": args.features, "DPAM_layer": DPAM_LAYER, "image_size": IMAGE_SIZE,
                             "sigma": SIGMA, "design_details": DESIGN}
    torch.save(reference, HERE / f"reference_{args.name}.pt")
    print({k: tuple(v.shape) for k, v in reference.items() if isinstance(v, torch.Tensor)})


if __name__ == "__main__":
    main()
