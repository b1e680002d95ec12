"""Train a learned detector: DMAD on normal data, AnomalyCLIP / InCTRL on auxiliary labelled data.

DMAD trains with synchronous data-parallel Ray workers (below). The CLIP-based detectors train
only a few prompt / head tensors over a frozen CLIP, on one Ray worker (a GPU where there is one).

Each worker holds a share of the normal data, starts from the same seeded weights, computes
gradients on its own batches and averages them with the others (``torch.distributed`` all-reduce
over gloo, the process group DDP uses), so every optimiser step sees ``workers x batch_size``
samples and the replicas stay identical. Rank 0 returns the checkpoint; the driver publishes it
to ``model_out`` (path or ``s3://``) and logs the loss curve and the checkpoint to MLflow.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from typing import Any, Literal

import numpy as np
import ray
import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from pipeline.config import JobConfig
from pipeline.detectors.anomalyclip import AnomalyCLIPSettings, train_anomalyclip
from pipeline.detectors.anomalyclip import save_checkpoint as save_anomalyclip
from pipeline.detectors.checkpoints import checkpoint_version
from pipeline.detectors.dmad import (
    DMADSettings,
    build_model,
    clip_windows,
    image_losses,
    make_optimizer,
    save_checkpoint,
    video_background,
    video_losses,
)
from pipeline.detectors.dmad_video import scene_of
from pipeline.detectors.inctrl import InCTRLSettings, train_inctrl
from pipeline.detectors.inctrl import save_checkpoint as save_inctrl
from pipeline.features.clip import load_clip
from pipeline.features.preprocess import Preprocess
from pipeline.io.batches import iter_batches
from pipeline.io.labelled import load_labelled
from pipeline.io.sources import Listing, list_inputs, plan_units, plan_video_units
from pipeline.io.storage import Storage
from pipeline.runtime import fitting_workers, init_ray, setup_worker_threads, wait_for_gang
from pipeline.tracking import check_tracking, flatten, start_run


class TrainConfig(JobConfig):
    detector: Literal["dmad", "anomalyclip", "inctrl"] = "dmad"
    normal: str | None = Field(None, min_length=1, description="dmad: normal images or videos")
    aux: str | None = Field(None, min_length=1, description="anomalyclip/inctrl: MVTec-style labelled folders")
    clip_arch: str | None = Field(None, description="overrides anomalyclip.clip_arch / inctrl.clip_arch")
    clip_weights: str | None = Field(None, description="overrides anomalyclip.clip_weights / inctrl.clip_weights")
    model_out: str = Field(min_length=1)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=2, le=1024, description="per worker; batch norm needs at least 2")
    seed: int = 0
    dmad: DMADSettings = DMADSettings()
    anomalyclip: AnomalyCLIPSettings = AnomalyCLIPSettings()
    inctrl: InCTRLSettings = InCTRLSettings()

    @model_validator(mode="after")
    def _data_for_detector(self) -> TrainConfig:
        if self.detector == "dmad" and not self.normal:
            raise ValueError("detector dmad trains on normal data: set normal")
        if self.detector != "dmad" and not self.aux:
            raise ValueError(f"detector {self.detector} trains on labelled auxiliary data: set aux")
        return self

    def clip_settings(self) -> AnomalyCLIPSettings | InCTRLSettings:
        """The CLIP detector's settings with the top-level clip_arch / clip_weights applied."""
        settings = self.anomalyclip if self.detector == "anomalyclip" else self.inctrl
        update = {k: v for k, v in (("clip_arch", self.clip_arch), ("clip_weights", self.clip_weights)) if v}
        return type(settings).model_validate(settings.model_dump() | update)


def train_clip_detector(cfg: TrainConfig) -> dict[str, Any]:
    """Ray task body: train AnomalyCLIP prompts or InCTRL heads over a frozen CLIP."""
    device = setup_worker_threads(cfg.runtime)
    storage = Storage(cfg.storage)
    settings = cfg.clip_settings()
    clip_model, clip_fingerprint = load_clip(settings.clip_arch, settings.clip_weights, settings.seed, storage)
    clip_model = clip_model.to(device)
    aux = load_labelled(storage, cfg.aux, Preprocess(settings.image_size, interpolation=settings.interpolation),
                        cfg.decode)
    if cfg.detector == "anomalyclip":
        rng = np.random.default_rng(cfg.seed)

        def batches():
            while True:
                pick = torch.from_numpy(rng.choice(len(aux.uris), size=min(cfg.batch_size, len(aux.uris)),
                                                   replace=False))
                yield aux.images[pick].to(device), aux.labels[pick].to(device), aux.masks[pick].to(device)

        prompts, curve = train_anomalyclip(settings, clip_model, batches(), cfg.steps)
        checkpoint = save_anomalyclip(prompts, settings, clip_fingerprint)
        return {"curve": [{k: v for k, v in c.items() if k != "step"} for c in curve], "checkpoint": checkpoint,
                "n_samples": len(aux.uris)}
    normal = aux.images[aux.labels == 0].to(device)
    anomalous = aux.images[aux.labels == 1].to(device)
    heads, losses = train_inctrl(settings, clip_model, normal, anomalous, cfg.steps, cfg.batch_size)
    checkpoint = save_inctrl(heads, settings, clip_fingerprint)
    return {"curve": [{"total": float(v)} for v in losses], "checkpoint": checkpoint, "n_samples": len(aux.uris)}


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


def _run_clip_training(cfg: TrainConfig, local: bool) -> tuple[dict[str, Any], float, float, list[int]]:
    if local:
        fitting_workers(cfg.runtime, 1, local)
    else:
        wait_for_gang(cfg.runtime, 1)
    remote = ray.remote(train_clip_detector).options(num_cpus=cfg.runtime.num_cpus_per_worker,
                                                     num_gpus=cfg.runtime.num_gpus_per_worker, max_retries=0)
    start = time.perf_counter()
    try:
        result = ray.get(remote.remote(cfg))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, ValueError) else None
        raise (cause or RuntimeError(f"training failed: {exc}")) from exc
    return result, 0.0, time.perf_counter() - start, [result["n_samples"]]


def _run_dmad_training(cfg: TrainConfig, t0: float, local: bool) -> tuple[dict[str, Any], float, float, list[int]]:
    world = fitting_workers(cfg.runtime, cfg.runtime.workers, local)
    if not local:
        wait_for_gang(cfg.runtime, world)
    remote = ray.remote(DMADTrainWorker).options(num_cpus=cfg.runtime.num_cpus_per_worker,
                                                  num_gpus=cfg.runtime.num_gpus_per_worker)
    workers = [remote.remote(cfg, rank, world) for rank in range(world)]
    try:
        n_samples = ray.get([w.n_samples.remote() for w in workers])
        master = ray.get(workers[0].address.remote())
        startup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        results = ray.get([w.train.remote(master) for w in workers])
        train_s = time.perf_counter() - t1
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, ValueError) else None
        raise (cause or RuntimeError(f"training failed: {exc}")) from exc
    finally:
        for w in workers:
            ray.kill(w)
    return results[0], startup_s, train_s, n_samples


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    storage = Storage(cfg.storage)
    data = cfg.normal if cfg.detector == "dmad" else cfg.aux
    storage.check_reachable(data, "normal" if cfg.detector == "dmad" else "aux")
    storage.check_reachable(cfg.model_out, "model_out")
    check_tracking(cfg.tracking)
    local = init_ray(cfg.runtime)
    if cfg.detector == "dmad":
        result, startup_s, train_s, n_samples = _run_dmad_training(cfg, t0, local)
    else:
        result, startup_s, train_s, n_samples = _run_clip_training(cfg, local)
    checkpoint, curve = result["checkpoint"], result["curve"]
    storage.write_bytes(cfg.model_out, checkpoint)
    summary = {
        "model_out": cfg.model_out, "detector": cfg.detector, "version": checkpoint_version(checkpoint),
        "variant": cfg.dmad.variant if cfg.detector == "dmad" else None,
        "steps": cfg.steps, "workers": len(n_samples), "samples_per_worker": n_samples,
        "loss_first": curve[0]["total"], "loss_last": curve[-1]["total"],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": {"startup": startup_s, "train": train_s, "total": time.perf_counter() - t0},
    }
    with start_run(cfg.tracking, f"train-{cfg.detector}", "train") as run:
        run.params(flatten(cfg.model_dump()) | {"model.version": summary["version"]})
        run.tags({"model_out": cfg.model_out, "detector": cfg.detector})
        for step, parts in enumerate(curve):
            run.metrics({f"loss_{k}": v for k, v in parts.items()}, step=step)
        run.metrics({"train_s": train_s})
        run.file_artifact(f"{cfg.detector}.pt", checkpoint, folder="model")
        run.json_artifact("train_summary.json", summary)
        summary["mlflow_run_id"] = run.run_id
    return summary
