"""DMAD training with synchronous data-parallel Ray workers (the registry's trainer for ``dmad``).

Each worker holds a share of the normal data, starts from the same seeded weights, computes gradients on its own
batches and averages them with the others (``torch.distributed`` all-reduce over gloo, the process group DDP uses),
so every optimiser step sees ``workers x batch_size`` samples and the replicas stay identical. Rank 0 returns the
checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from torch import Tensor, nn

from pipeline.detectors.dmad.detector import (
    build_model,
    clip_windows,
    image_losses,
    save_checkpoint,
    video_background,
    video_losses,
)
from pipeline.detectors.dmad.settings import DMADSettings
from pipeline.detectors.dmad.video_model import BACKGROUND_LR_SCALE, VideoDMAD, scene_of
from pipeline.errors import SetupError, WeightsError
from pipeline.features.backbones import is_torchvision, load_state_dict, torchvision_weights
from pipeline.features.preprocess import Preprocess
from pipeline.io.batches import iter_batches
from pipeline.io.sources import Listing, list_inputs, plan_units, plan_video_units
from pipeline.io.storage import Storage
from pipeline.runtime import setup_worker_threads, start_gang, training_errors

if TYPE_CHECKING:
    from pipeline.config import TrainConfig

log = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, settings: DMADSettings) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; the video background learns faster, as official (50x, shanghai 10x);
    the image variant uses the official betas (0.5, 0.999)."""
    params = [p for name, p in model.named_parameters() if p.requires_grad and name != "background"]
    groups: list[dict] = [{"params": params}]
    if isinstance(model, VideoDMAD):
        groups.append({"params": [model.background], "lr": settings.lr * BACKGROUND_LR_SCALE[settings.layout]})
        return torch.optim.AdamW(groups, lr=settings.lr)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.5, 0.999))



def train_step(model: nn.Module, batch: Tensor, optimizer: torch.optim.Optimizer, settings: DMADSettings,
               scenes: Tensor | None = None) -> dict[str, float]:
    """One optimiser step. ``batch``: windows ``[B, in_frames+1, 3, H, W]`` (video, see :func:`clip_windows`; with
    each window's ``scenes`` for layout=shanghai) or images ``[B,3,H,W]`` (image), 0..1, B >= 2 (batch norm).
    Returns the loss parts and their weighted ``total``."""
    model.train()
    device = next(model.parameters()).device
    batch = batch.to(device)
    if settings.variant == "video":
        parts = video_losses(model, batch, settings, None if scenes is None else scenes.to(device))
    else:
        parts = image_losses(model, batch, settings)
    optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in parts.items()}



def train_dmad(settings: DMADSettings, batches: Sequence[Tensor], steps: int, seed: int,
               storage: Storage | None = None, device: str = "cpu", scenes: Sequence[Tensor] | None = None
               ) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a fresh model (initialised from ``seed``) for ``steps`` steps, cycling over ``batches`` (video: with
    each window's scene in ``scenes``, default all 0; the backgrounds start at the batches' per-scene median).
    Returns the model in eval mode and the loss curve."""
    if not batches:
        raise ValueError("batches yielded no batch to train on")
    scenes = scenes if scenes is not None else [torch.zeros(len(b), dtype=torch.long) for b in batches]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(settings, storage).to(device)
        if settings.variant == "video":
            with torch.no_grad():
                model.background.copy_(video_background(torch.cat(list(batches)), torch.cat(list(scenes)),
                                                        settings)[0])
        optimizer = make_optimizer(model, settings)
        curve = [train_step(model, batches[i % len(batches)], optimizer, settings, scenes[i % len(batches)])
                 for i in range(steps)]
    return model.eval(), curve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class DMADTrainWorker:
    """Ray actor: one data-parallel replica."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = setup_worker_threads(cfg.runtime)
        self.storage = Storage(cfg.storage)
        self.samples = self._load_share()

    def _load_share(self) -> torch.Tensor:
        """This rank's training samples: clip windows (video) or images, at the model's input size. Sets
        ``self.scenes``: each sample's background index (video; 0 unless the model has one per scene)."""
        cfg = self.cfg
        listing = list_inputs(self.storage, cfg.normal)
        video = cfg.dmad.variant == "video"
        files = listing.videos if video else listing.images
        split_files = len(files) >= self.world
        mine = files[self.rank::self.world] if split_files else files
        units = (plan_video_units(self.storage, mine, cfg.video.model_copy(update={"frames_per_unit": 10**9}))
                 if video else plan_units(Listing(mine, [], []), 10**9)[0])
        preprocess = Preprocess(cfg.dmad.image_size, interpolation=cfg.dmad.interpolation)
        samples, scenes = [], []
        for unit in units:
            scene = scene_of(unit.video, cfg.dmad.scenes) if video else 0
            frames = [b.tensor for b in iter_batches(self.storage, unit, cfg.decode, preprocess, 64)
                      if b.tensor is not None]
            if not frames:
                continue
            stacked = torch.cat(frames)
            if video and len(stacked) <= cfg.dmad.in_frames:
                continue
            samples.append(clip_windows(stacked, cfg.dmad.in_frames) if video else stacked)
            scenes.append(torch.full((len(samples[-1]),), scene, dtype=torch.long))
        if not samples:
            kind = "videos with more than in_frames frames" if video else "images"
            raise ValueError(f"normal={cfg.normal}: no decodable {kind} for DMAD ({cfg.dmad.variant}) training")
        data, self.scenes = torch.cat(samples), torch.cat(scenes)
        if not split_files:
            data, self.scenes = data[self.rank::self.world], self.scenes[self.rank::self.world]
        return data

    def _start_background(self, model: torch.nn.Module) -> None:
        """Video: each scene's background starts at the median of the training frames, averaged over the ranks
        that have frames of that scene (the official code starts from a precomputed image)."""
        background, seen = video_background(self.samples, self.scenes, self.cfg.dmad)
        background, seen = background.to(self.device), seen.to(self.device, torch.float32)
        dist.all_reduce(background)
        dist.all_reduce(seen)
        with torch.no_grad():
            model.background.copy_(background / seen.clamp(min=1).view(-1, 1, 1, 1))

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), _free_port()

    def n_samples(self) -> int:
        return len(self.samples)

    def train(self, master: tuple[str, int]) -> dict[str, Any]:
        cfg = self.cfg
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master[0], str(master[1])
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world)
        try:
            torch.manual_seed(cfg.seed)  # identical initial replicas
            model = build_model(cfg.dmad, self.storage).to(self.device)
            video = cfg.dmad.variant == "video"
            if video:
                self._start_background(model)
            optimizer = make_optimizer(model, cfg.dmad)
            rng = np.random.default_rng(cfg.seed + 1000 * self.rank)
            params = [p for p in model.parameters() if p.requires_grad]
            curve = []
            model.train()
            for _ in range(cfg.steps):
                pick = rng.choice(len(self.samples), size=min(cfg.batch_size, len(self.samples)), replace=False)
                batch = self.samples[torch.from_numpy(pick)].to(self.device)
                parts = (video_losses(model, batch, cfg.dmad, self.scenes[torch.from_numpy(pick)].to(self.device))
                         if video else image_losses(model, batch, cfg.dmad))
                optimizer.zero_grad(set_to_none=True)
                parts["total"].backward()
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
                optimizer.step()
                values = torch.tensor([float(v.detach()) for v in parts.values()])
                dist.all_reduce(values)
                curve.append(dict(zip(parts, (values / self.world).tolist(), strict=True)))
            model.eval()
            return {"curve": curve, "checkpoint": save_checkpoint(model, cfg.dmad) if self.rank == 0 else None}
        finally:
            dist.destroy_process_group()


def run(cfg: TrainConfig, local: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    workers = start_gang(DMADTrainWorker, cfg.runtime, local, lambda rank, world: (cfg, rank, world))
    try:
        with training_errors():
            n_samples = ray.get([w.n_samples.remote() for w in workers])
            master = ray.get(workers[0].address.remote())
            startup_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            results = ray.get([w.train.remote(master) for w in workers])
        train_s = time.perf_counter() - t1
    finally:
        for w in workers:
            ray.kill(w)
    return results[0] | {"startup_s": startup_s, "train_s": train_s, "n_samples": n_samples}


def check(cfg: TrainConfig, storage: Storage) -> None:
    """On the driver, before Ray starts: the image variant's frozen encoder weights can be named and read, and a
    random encoder is warned about (the video variant learns all its weights, as the official code does)."""
    settings = cfg.detector_settings()
    if settings.variant != "image":
        return
    if settings.weights == "none":
        log.warning("dmad.weights=none: the image variant's frozen %s encoder is randomly initialised, so this "
                    "model's scores mean nothing about real anomalies (fine for tests and demos; set "
                    "dmad.weights to torchvision or a weights file for real use)", settings.backbone)
        return
    try:
        if is_torchvision(settings.weights):
            torchvision_weights(settings.backbone, settings.weights)
        else:
            load_state_dict(storage, settings.weights)
    except WeightsError as exc:
        raise SetupError(str(exc).replace("patchcore.weights", "dmad.weights")) from exc  # the loader's wording
