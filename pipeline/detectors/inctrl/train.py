"""Training InCTRL's heads over a frozen CLIP, on auxiliary labelled data (the registry's trainer for ``inctrl``).
The trainable part is small: one Ray task, on a GPU where there is one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.detectors.components import clip_training_inputs
from pipeline.detectors.inctrl.detector import (
    InCTRLHeads,
    build_heads,
    encode_images,
    group_prompts,
    inctrl_forward,
    save_checkpoint,
    text_features,
)
from pipeline.detectors.inctrl.settings import InCTRLSettings
from pipeline.runtime import run_task

if TYPE_CHECKING:
    from pipeline.config import TrainConfig


def binary_loss(scores: Tensor, labels: Tensor, gamma: float) -> Tensor:
    bce = F.binary_cross_entropy(scores, labels, reduction="none")
    return (bce if gamma == 0 else (1 - torch.exp(-bce)).pow(gamma) * bce).mean()



def sample_prompt_indices(queries: Tensor, normal_count: int, shots: int, exclude: int,
                          generator: torch.Generator) -> Tensor:
    """``[len(queries)*shots]`` normal indices, query-major; the first ``exclude`` queries are normal indices that
    their own prompt set must not contain."""
    rows = []
    for i, query in enumerate(queries.tolist()):
        if i < exclude:
            picks = torch.randperm(normal_count - 1, generator=generator)[:shots]
            rows.append(picks + (picks >= query).long())
        else:
            rows.append(torch.randperm(normal_count, generator=generator)[:shots])
    return torch.cat(rows)



def train_inctrl(settings: InCTRLSettings, clip_model: nn.Module, normal_images: Tensor, anomalous_images: Tensor,
                 steps: int, batch_size: int = 8) -> tuple[InCTRLHeads, list[float]]:
    """Train fresh heads on auxiliary data (images 0..1). Each step: ``batch_size/2`` normal and as many anomalous
    queries, each with its own ``shots`` normal prompts drawn from the other normal images. Returns the heads in
    eval mode and the per-step loss. CLIP must come frozen (as :func:`load_clip` returns it) and stays so."""
    if any(p.requires_grad for p in clip_model.parameters()):
        raise ValueError("clip_model must be frozen (requires_grad=False)")
    if batch_size < 2 or batch_size % 2:
        raise ValueError("batch_size: an even number >= 2 (balanced batches, batch norm)")
    normal_count = normal_images.shape[0]
    if normal_count < settings.shots + 1 or anomalous_images.shape[0] < 1:
        raise ValueError(f"need at least shots+1={settings.shots + 1} normal and 1 anomalous image")
    device = next(clip_model.parameters()).device
    half = batch_size // 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        heads = build_heads(settings, clip_model).to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    labels = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
    with torch.no_grad():
        text = text_features(clip_model, settings)
    heads.train()
    curve: list[float] = []
    for _ in range(steps):
        normal_idx = torch.randint(normal_count, (half,), generator=generator)
        anomalous_idx = torch.randint(anomalous_images.shape[0], (half,), generator=generator)
        prompt_idx = sample_prompt_indices(torch.cat([normal_idx, anomalous_idx]), normal_count, settings.shots,
                                           half, generator)
        queries = torch.cat([normal_images[normal_idx], anomalous_images[anomalous_idx]]).to(device)
        with torch.no_grad():
            query = encode_images(clip_model, queries, settings.patch_layers)
            prompts = group_prompts(encode_images(clip_model, normal_images[prompt_idx].to(device),
                                                  settings.patch_layers), settings.shots)
        out = inctrl_forward(heads, query, prompts, text, settings)
        loss = binary_loss(out.final, labels, settings.focal_gamma) + binary_loss(out.image, labels,
                                                                                   settings.focal_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(float(loss.detach()))
    return heads.eval(), curve


def _inctrl_task(cfg: TrainConfig) -> dict[str, Any]:
    settings, clip_model, clip_fingerprint, aux, device = clip_training_inputs(cfg)
    normal = aux.images[aux.labels == 0].to(device)
    anomalous = aux.images[aux.labels == 1].to(device)
    heads, losses = train_inctrl(settings, clip_model, normal, anomalous, cfg.steps, cfg.batch_size)
    checkpoint = save_checkpoint(heads, settings, clip_fingerprint)
    return {"curve": [{"total": float(v)} for v in losses], "checkpoint": checkpoint, "n_samples": [len(aux.uris)]}


def run(cfg: TrainConfig, local: bool) -> dict[str, Any]:
    return run_task(_inctrl_task, cfg.runtime, local, cfg)
