"""Training of the CLIP-based detectors: AnomalyCLIP prompts or InCTRL heads over a frozen CLIP.

The trainable part is small, so each trains in one Ray task (on a GPU where there is one), on auxiliary labelled
data (MVTec-style folders with masks). ``run_anomalyclip`` and ``run_inctrl`` are the registry's trainers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch

from pipeline.detectors.anomalyclip import save_checkpoint as save_anomalyclip
from pipeline.detectors.anomalyclip import train_anomalyclip
from pipeline.detectors.inctrl import save_checkpoint as save_inctrl
from pipeline.detectors.inctrl import train_inctrl
from pipeline.features.clip import load_clip
from pipeline.features.preprocess import Preprocess
from pipeline.io.labelled import LabelledSet, load_labelled
from pipeline.io.storage import Storage
from pipeline.runtime import fitting_workers, setup_worker_threads, wait_for_gang

if TYPE_CHECKING:
    from pipeline.train import TrainConfig


def _prepare(cfg: TrainConfig) -> tuple[Any, torch.nn.Module, str, LabelledSet, str]:
    """In the task: the detector's settings, the frozen CLIP on the task's device, its fingerprint, the aux data."""
    device = setup_worker_threads(cfg.runtime)
    storage = Storage(cfg.storage)
    settings = cfg.detector_settings()
    clip_model, clip_fingerprint = load_clip(settings.clip_arch, settings.clip_weights, settings.seed, storage)
    aux = load_labelled(storage, cfg.aux, Preprocess(settings.image_size, interpolation=settings.interpolation),
                        cfg.decode)
    return settings, clip_model.to(device), clip_fingerprint, aux, device


def _anomalyclip_task(cfg: TrainConfig) -> dict[str, Any]:
    settings, clip_model, clip_fingerprint, aux, device = _prepare(cfg)
    rng = np.random.default_rng(cfg.seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            pick = torch.from_numpy(rng.choice(len(aux.uris), size=min(cfg.batch_size, len(aux.uris)),
                                               replace=False))
            yield aux.images[pick].to(device), aux.labels[pick].to(device), aux.masks[pick].to(device)

    prompts, curve = train_anomalyclip(settings, clip_model, batches(), cfg.steps)
    checkpoint = save_anomalyclip(prompts, settings, clip_fingerprint)
    return {"curve": [{k: v for k, v in c.items() if k != "step"} for c in curve], "checkpoint": checkpoint,
            "n_samples": [len(aux.uris)]}


def _inctrl_task(cfg: TrainConfig) -> dict[str, Any]:
    settings, clip_model, clip_fingerprint, aux, device = _prepare(cfg)
    normal = aux.images[aux.labels == 0].to(device)
    anomalous = aux.images[aux.labels == 1].to(device)
    heads, losses = train_inctrl(settings, clip_model, normal, anomalous, cfg.steps, cfg.batch_size)
    checkpoint = save_inctrl(heads, settings, clip_fingerprint)
    return {"curve": [{"total": float(v)} for v in losses], "checkpoint": checkpoint, "n_samples": [len(aux.uris)]}


def _run_task(task: Callable[[TrainConfig], dict[str, Any]], cfg: TrainConfig, local: bool) -> dict[str, Any]:
    if local:
        fitting_workers(cfg.runtime, 1, local)
    else:
        wait_for_gang(cfg.runtime, 1)
    remote = ray.remote(task).options(num_cpus=cfg.runtime.num_cpus_per_worker,
                                      num_gpus=cfg.runtime.num_gpus_per_worker, max_retries=0)
    start = time.perf_counter()
    try:
        result = ray.get(remote.remote(cfg))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, ValueError) else None
        raise (cause or RuntimeError(f"training failed: {exc}")) from exc
    return result | {"startup_s": 0.0, "train_s": time.perf_counter() - start}


def run_anomalyclip(cfg: TrainConfig, local: bool) -> dict[str, Any]:
    return _run_task(_anomalyclip_task, cfg, local)


def run_inctrl(cfg: TrainConfig, local: bool) -> dict[str, Any]:
    return _run_task(_inctrl_task, cfg, local)
