"""Training AnomalyCLIP's object-agnostic prompts over a frozen CLIP, on auxiliary labelled data (the registry's
trainer for ``anomalyclip``). The trainable part is small: one Ray task, on a GPU where there is one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.detectors.anomalyclip.detector import (
    AnomalyCLIPPrompts,
    build_prompts,
    encode_image,
    image_logits,
    save_checkpoint,
    similarity_maps,
)
from pipeline.detectors.anomalyclip.settings import AnomalyCLIPSettings
from pipeline.detectors.components import check_clip_training, clip_training_inputs
from pipeline.errors import ConfigError
from pipeline.features.clip import normalize, tower_layers
from pipeline.io.storage import Storage
from pipeline.runtime import run_task

if TYPE_CHECKING:
    from pipeline.config import TrainConfig


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, eps: float = 1e-5) -> Tensor:
    """Focal loss on softmax probabilities ``[B,2,H,W]`` and a binary mask ``[B,H,W]`` (the official ``FocalLoss``
    with alpha = 1; its 1e-5 label smoothing is left out)."""
    pt = torch.where(target > 0.5, probs[:, 1], probs[:, 0]) + eps
    return (-(1 - pt) ** gamma * pt.log()).mean()



def dice_loss(prob: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Per-image binary dice loss ``[B,H,W]``, averaged over the batch."""
    p, t = prob.flatten(1), target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()



def anomalyclip_losses(clip_model: nn.Module, prompts: AnomalyCLIPPrompts, settings: AnomalyCLIPSettings,
                       images: Tensor, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Loss terms and their weighted ``total`` for one labelled batch (images 0..1, masks binarised at 0.5)."""
    with torch.no_grad():  # the vision tower is frozen and nothing on its side learns
        pooled, patches = encode_image(clip_model, normalize(images), settings.feature_layers, settings.dpam_start)
    text = prompts(clip_model)
    gt = (masks > 0.5).to(pooled.dtype)
    maps = similarity_maps(patches, text, settings.temperature, settings.image_size)
    image = F.cross_entropy(image_logits(pooled, text, settings.temperature), labels.long())
    focal = sum(focal_loss(m, gt) for m in maps)
    dice = sum(dice_loss(m[:, 1], gt) + dice_loss(m[:, 0], 1 - gt) for m in maps)
    total = image + settings.focal_weight * focal + settings.dice_weight * dice
    return {"total": total, "image": image, "focal": focal, "dice": dice}



def _assert_frozen(clip_model: nn.Module) -> None:
    trainable = [name for name, p in clip_model.named_parameters() if p.requires_grad]
    assert not trainable, f"CLIP parameters must stay frozen, these require grad: {trainable[:3]}"



def train_anomalyclip(settings: AnomalyCLIPSettings, clip_model: nn.Module,
                      batches: Iterable[tuple[Tensor, Tensor, Tensor]], steps: int
                      ) -> tuple[AnomalyCLIPPrompts, list[dict]]:
    """Learn the prompts on auxiliary labelled data: ``(images [B,3,H,W] 0..1, labels [B], masks [B,H,W])``
    batches, at most ``steps`` of them. Adam with betas (0.5, 0.999), as the official training script."""
    _assert_frozen(clip_model)
    prompts = build_prompts(settings, clip_model).train()
    optimizer = torch.optim.Adam(prompts.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    device = prompts.ctx.device
    curve = []
    for step, (images, labels, masks) in enumerate(islice(batches, steps)):
        losses = anomalyclip_losses(clip_model, prompts, settings, images.to(device), labels.to(device),
                                    masks.to(device))
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        curve.append({"step": step, **{name: float(value.detach()) for name, value in losses.items()}})
    _assert_frozen(clip_model)
    return prompts.eval(), curve


def _anomalyclip_task(cfg: TrainConfig) -> dict[str, Any]:
    settings, clip_model, clip_fingerprint, aux, device = clip_training_inputs(cfg)
    rng = np.random.default_rng(cfg.seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            pick = torch.from_numpy(rng.choice(len(aux.uris), size=min(cfg.batch_size, len(aux.uris)),
                                               replace=False))
            yield aux.images[pick].to(device), aux.labels[pick].to(device), aux.masks[pick].to(device)

    prompts, curve = train_anomalyclip(settings, clip_model, batches(), cfg.steps)
    checkpoint = save_checkpoint(prompts, settings, clip_fingerprint)
    return {"curve": [{k: v for k, v in c.items() if k != "step"} for c in curve], "checkpoint": checkpoint,
            "n_samples": [len(aux.uris)]}


def run(cfg: TrainConfig, local: bool) -> dict[str, Any]:
    return run_task(_anomalyclip_task, cfg.runtime, local, cfg)


def check(cfg: TrainConfig, storage: Storage) -> None:
    """On the driver, before Ray starts: prompts and feature layers that the CLIP towers cannot hold, in one line
    naming each setting to lower; then the weights (see :func:`check_clip_training`)."""
    settings = cfg.detector_settings()
    vision, text = tower_layers(settings.clip_arch)
    fixes = []
    if settings.deep_prompt_depth > text:
        fixes.append(f"lower anomalyclip.deep_prompt_depth={settings.deep_prompt_depth} to {text} or less")
    if max(settings.feature_layers) > vision:
        fixes.append(f"keep anomalyclip.feature_layers={settings.feature_layers} within 1..{vision}")
    if fixes:
        raise ConfigError(f"clip_arch={settings.clip_arch} has {text} text and {vision} vision layers: "
                          f"{'; '.join(fixes)} (YAML section anomalyclip:)")
    check_clip_training(cfg, storage)
