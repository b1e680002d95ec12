"""InCTRL (Zhu & Pang, CVPR 2024, "Toward Generalist Anomaly Detection via In-context Residual Learning with
Few-shot Sample Prompts"), on a frozen open_clip ViT.

A query image is compared with ``k`` normal *prompt* images of the target data; a detector trained once on
auxiliary labelled data then scores residuals, so it carries over to new data sets given only new prompts.

- Patch residuals: at each tapped ViT block (raw residual-stream tokens, as the official code), every query patch
  token gets ``0.5 * (1 - max cos)`` against all patch tokens of the ``k`` prompts; the layers are averaged into the
  patch map ``M`` (``[grid*grid]``).
- Image residual: ``r = A(g_q) - mean_j A(g_pj)`` with ``A`` a trainable bottleneck adapter on the projected CLS
  embedding ``g``; ``s_i = head_i(r)``.
- Text prior: ``s_t = softmax(100 * cos(g_q, [normal, anomalous]))[anomalous]`` with prompt-ensemble text embeddings
  of the object's name (the official code names the data set's class; see :func:`prompt_texts`).
- Holistic head (official code): ``s_h = head_h(M + s_t + s_i)`` (the two scalars broadcast over the patch vector).
- Final score: ``s = (s_h + max(M)) / 2``; the loss is ``BCE(s) + BCE(s_i)`` on balanced batches.

The authors' released weights load through :mod:`~pipeline.detectors.inctrl.importer` and their few-shot prompt
files through
:func:`read_prompt_file`; ``tests/test_official_inctrl.py`` checks this forward pass against outputs of the official
code (github.com/mala-lab/InCTRL) on the same weights and inputs. Remaining differences from the official code:

- Batches: every tensor keeps its query's batch row (the official reshapes mix images up when the batch size is
  above 1; its test runs batch size 1, which this equals).
- Residual sign: query minus prompts (the official subtracts the other way round). The image head starts with a
  linear layer, so the importer negates that layer's weight and the scores are identical.
- Head layout: the official heads define a batch norm on their input that their forward never uses; it is not
  built here (the importer drops its tensors).
- Object name: the official test names each query's class from its data set; here it is the setting
  ``object_name``, which a released few-shot file ``{class}.pt`` passed as prompts sets to its class.
- Training (not needed for released weights): the loss is BCE on the sigmoid outputs (``focal_gamma`` > 0 gives a
  focal loss; the official applies a with-logits focal loss to probabilities), and each query gets its prompts
  from the other normal images of the auxiliary set (the official samples them per class).
- Outputs: the official code returns image scores only; the anomaly maps here are the patch map ``M`` upsampled
  bilinearly and Gaussian-smoothed (``sigma``).
- Preprocessing: a square bicubic resize to ``image_size`` (pipeline.features.preprocess); the official resizes the
  shorter side to 240 and centre-crops 240, the same on square images.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.detectors.base import ModelRef, ScoreBatch
from pipeline.detectors.checkpoints import checkpoint_version, pack
from pipeline.detectors.inctrl.settings import CHECKPOINT_FORMAT, SEMANTIC_CLASSES, InCTRLSettings
from pipeline.features.clip import CLIP_MEAN, CLIP_STD, load_clip, normalize, tokenizer
from pipeline.features.preprocess import Preprocess, gaussian_blur
from pipeline.io.decode import decode_image
from pipeline.io.sources import is_image
from pipeline.io.storage import Storage

if TYPE_CHECKING:
    from pipeline.config import ScoreConfig


# ---------------------------------------------------------------- frozen CLIP features


@dataclass
class ClipFeatures:
    """``global_``: projected CLS embeddings ``[B,E]`` (prompts: ``[B,k,E]``); ``patches``: tapped patch tokens
    ``[B,L,P,W]`` (prompts: ``[B,L,k*P,W]``, the k images' tokens side by side)."""

    global_: Tensor
    patches: Tensor


def check_clip(settings: InCTRLSettings, clip_model: nn.Module) -> None:
    visual = clip_model.visual
    size, depth = visual.image_size[0], len(visual.transformer.resblocks)
    if settings.image_size != size:
        raise ValueError(f"image_size={settings.image_size} but {settings.clip_arch} takes {size} px")
    if max(settings.patch_layers) > depth:
        raise ValueError(f"patch_layers={settings.patch_layers} but {settings.clip_arch} has {depth} blocks")


def encode_images(clip_model: nn.Module, images: Tensor, layers: list[int]) -> ClipFeatures:
    """``images``: ``[B,3,H,W]`` in 0..1. Tokens after the 1-based blocks ``layers`` (sorted), without ln_post."""
    out = clip_model.visual.forward_intermediates(normalize(images), indices=[n - 1 for n in layers],
                                                  output_fmt="NLC")
    return ClipFeatures(out["image_features"], torch.stack(out["image_intermediates"], dim=1))


def group_prompts(features: ClipFeatures, shots: int) -> ClipFeatures:
    """Features of ``B*shots`` images, query-major (query 0's prompts first), to per-query prompt sets."""
    batch = features.global_.shape[0] // shots
    _, layers, patches, width = features.patches.shape
    grouped = features.patches.view(batch, shots, layers, patches, width).transpose(1, 2)
    return ClipFeatures(features.global_.view(batch, shots, -1), grouped.reshape(batch, layers, shots * patches, width))


def prompt_texts(settings: InCTRLSettings) -> tuple[list[str], list[str]]:
    """The normal and the anomalous texts: every state in every template, except that (as in the official code)
    a CIFAR-10 class name gets "a photo of {} for anomaly detection." and "a photo without {} for anomaly
    detection." only."""
    name = settings.object_name
    if name in SEMANTIC_CLASSES:
        return [f"a photo of {name} for anomaly detection."], [f"a photo without {name} for anomaly detection."]
    normal = [t.format(s.format(name)) for s in settings.normal_states for t in settings.templates]
    anomalous = [t.format(s.format(name)) for s in settings.anomalous_states for t in settings.templates]
    return normal, anomalous


def text_features(clip_model: nn.Module, settings: InCTRLSettings) -> Tensor:
    """``[2,E]``: the normalised mean of the normalised embeddings of the normal, then the anomalous prompts."""
    tokenize = tokenizer(settings.clip_arch)
    device = next(clip_model.parameters()).device
    rows = []
    for texts in prompt_texts(settings):
        embeddings = F.normalize(clip_model.encode_text(tokenize(texts).to(device)), dim=-1)
        rows.append(F.normalize(embeddings.mean(0), dim=-1))
    return torch.stack(rows)


# ---------------------------------------------------------------- trainable heads and the forward pass


def score_head(dim_in: int) -> nn.Sequential:
    """The official ``TransformerBasicHead``: 128 -> 64 -> 1 with batch norm after each ReLU, sigmoid output."""
    return nn.Sequential(nn.Linear(dim_in, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Linear(128, 64), nn.ReLU(),
                         nn.BatchNorm1d(64), nn.Linear(64, 1), nn.Sigmoid())


class InCTRLHeads(nn.Module):
    """Everything InCTRL trains: the image-level adapter, the image residual head and the holistic head."""

    def __init__(self, embed_dim: int, num_patches: int, reduction: int):
        super().__init__()
        hidden = max(1, embed_dim // reduction)
        self.adapter = nn.Sequential(nn.Linear(embed_dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, embed_dim, bias=False), nn.ReLU())
        self.image_head = score_head(embed_dim)
        self.holistic_head = score_head(num_patches)


def build_heads(settings: InCTRLSettings, clip_model: nn.Module) -> InCTRLHeads:
    """Fresh heads sized for ``clip_model`` (initialised from torch's global RNG)."""
    check_clip(settings, clip_model)
    visual = clip_model.visual
    return InCTRLHeads(visual.output_dim, visual.grid_size[0] * visual.grid_size[1], settings.adapter_reduction)


@dataclass
class InCTRLOutput:
    final: Tensor  # [B] the anomaly score
    image: Tensor  # [B] image-level residual head
    holistic: Tensor  # [B] holistic head
    text: Tensor  # [B] text prior
    patch_map: Tensor  # [B,P] layer-averaged patch residuals


def patch_residuals(query: Tensor, prompts: Tensor) -> Tensor:
    """``[B,L,P,W]`` query tokens vs ``[B,L,Q,W]`` prompt tokens -> ``[B,P]`` mean over layers of
    ``0.5 * (1 - max cos)``. The nearest token is found by a matmul; the residual is recomputed from the difference
    of unit vectors (``|a-b|^2 / 4`` equals ``(1 - cos) / 2``), so a patch equal to a prompt patch gives exactly 0."""
    q, p = F.normalize(query, dim=-1), F.normalize(prompts, dim=-1)
    nearest = (q @ p.transpose(-1, -2)).argmax(dim=-1)
    matched = torch.gather(p, 2, nearest.unsqueeze(-1).expand(-1, -1, -1, p.shape[-1]))
    return (0.25 * (q - matched).pow(2).sum(-1)).mean(dim=1)


def inctrl_forward(heads: InCTRLHeads, query: ClipFeatures, prompts: ClipFeatures, text: Tensor,
                   settings: InCTRLSettings) -> InCTRLOutput:
    """``prompts``: per-query prompt sets from :func:`group_prompts`, batch B or 1 (shared by all queries)."""
    batch = query.global_.shape[0]
    prompt_patches = prompts.patches.expand(batch, -1, -1, -1)
    patch_map = patch_residuals(query.patches, prompt_patches)
    residual = heads.adapter(query.global_) - heads.adapter(prompts.global_).mean(dim=1)
    image = heads.image_head(residual).squeeze(1)
    logits = settings.text_scale * F.normalize(query.global_, dim=-1) @ text.T
    text_prior = logits.softmax(dim=-1)[:, 1]
    holistic = heads.holistic_head(patch_map + text_prior[:, None] + image[:, None]).squeeze(1)
    final = (holistic + patch_map.amax(dim=1)) / 2
    return InCTRLOutput(final, image, holistic, text_prior, patch_map)


# ---------------------------------------------------------------- prompts and training


def choose_prompts(uris: list[str], k: int, seed: int) -> list[str]:
    """``k`` distinct URIs, the same for the same set of URIs in any order: a seeded sample of the sorted list."""
    pool = sorted(set(uris))
    if len(pool) < k:
        raise ValueError(f"need {k} normal prompt images, got {len(pool)}")
    return sorted(random.Random(seed).sample(pool, k))


@dataclass
class PromptSet:
    """Few-shot normal prompts ``[k,3,H,W]`` (0..1) and, where their source names it, the object they show."""

    images: Tensor
    object_name: str | None = None


def is_prompt_file(uri: str) -> bool:
    """Whether ``prompts`` names one of the authors' few-shot files (``{class}.pt``) rather than image folders."""
    return uri.endswith(".pt")


def read_prompt_file(data: bytes, uri: str, image_size: int, shots: int | None) -> PromptSet:
    """An authors' few-shot prompt file: ``torch.save`` of a list of ``k`` CLIP-normalised ``[3,H,W]`` tensors
    (the official test stacks them straight into the model's input, so they carry the official preprocessing and
    normalisation). Returns them back in 0..1, and the class the official test names in its text prompts, which is
    the file's name (``{class}.pt``, underscores read as spaces). ``shots``, when given, must equal ``k``."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"prompts={uri}: not a few-shot prompt file readable as plain tensors ({exc})") from exc
    stacked = isinstance(loaded, Tensor) and loaded.ndim == 4
    images = list(loaded) if stacked or isinstance(loaded, (list, tuple)) else []
    shape = (3, image_size, image_size)
    if not images or any(not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != shape
                         for t in images):
        raise ValueError(f"prompts={uri}: expected a list of float tensors [3,{image_size},{image_size}] "
                         "(a released InCTRL few-shot file)")
    if shots is not None and shots != len(images):
        raise ValueError(f"shots={shots} but prompts={uri} holds {len(images)} images")
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".pt").replace("_", " ")
    return PromptSet(torch.stack(images).float() * std + mean, name or None)


# ---------------------------------------------------------------- checkpoints and the detector


def save_checkpoint(heads: InCTRLHeads, settings: InCTRLSettings, clip_fingerprint: str) -> bytes:
    """Trainable tensors, settings JSON and the CLIP fingerprint only: loadable with ``weights_only=True``."""
    return pack(CHECKPOINT_FORMAT, settings.model_dump_json(), heads.state_dict(), clip_fingerprint=clip_fingerprint)


def load_checkpoint(data: bytes, storage: Storage, prompts: Tensor, clip_arch: str | None = None,
                    clip_weights: str | None = None, shots: int | None = None, device: str = "cpu",
                    object_name: str | None = None) -> InCTRLDetector:
    """A detector from :func:`save_checkpoint` bytes and ``prompts`` ``[shots,3,H,W]`` (0..1). ``clip_arch``,
    ``clip_weights``, ``shots`` and ``object_name`` override the stored settings; CLIP weights other than those
    trained with are refused unless training used a random-init CLIP."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an InCTRL checkpoint (expected format {CHECKPOINT_FORMAT})")
    stored = InCTRLSettings.model_validate_json(payload["settings"])
    overrides = {k: v for k, v in {"clip_arch": clip_arch, "clip_weights": clip_weights, "shots": shots,
                                   "object_name": object_name}.items() if v is not None}
    settings = InCTRLSettings.model_validate({**stored.model_dump(), **overrides})
    clip_model, fingerprint = load_clip(settings.clip_arch, settings.clip_weights, settings.seed, storage)
    trained_with = payload["clip_fingerprint"]
    if not trained_with.startswith("random:") and trained_with != fingerprint:
        raise ValueError(f"clip_arch={settings.clip_arch} clip_weights={settings.clip_weights} have fingerprint "
                         f"{fingerprint}, the checkpoint was trained with {trained_with}")
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: leave the caller's RNG alone
        heads = build_heads(settings, clip_model)
    try:
        heads.load_state_dict(payload["state"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint heads do not fit clip_arch={settings.clip_arch}: {exc}") from exc
    return InCTRLDetector(clip_model.to(device), heads.to(device), settings, prompts, checkpoint_version(data), device)


def prompt_images(cfg: ScoreConfig, storage: Storage, checkpoint: bytes) -> PromptSet:
    """The few-shot normal prompts: an authors' few-shot file as it is, or ``shots`` images chosen
    deterministically from the images under ``cfg.prompts``."""
    settings = InCTRLSettings.model_validate_json(
        torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)["settings"])
    if is_prompt_file(cfg.prompts):
        return read_prompt_file(storage.read_bytes(cfg.prompts), cfg.prompts, settings.image_size, cfg.shots)
    shots = cfg.shots or settings.shots
    uris = [u for u in storage.list_files(cfg.prompts) if is_image(u)]
    if len(uris) < shots:
        raise ValueError(f"prompts={cfg.prompts}: {len(uris)} images, shots={shots} needs at least that many")
    chosen = choose_prompts(uris, shots, settings.seed)
    preprocess = Preprocess(settings.image_size, interpolation=settings.interpolation)
    return PromptSet(torch.stack([preprocess(decode_image(storage.read_bytes(u), cfg.decode.max_pixels))
                                  for u in chosen]))


def load_for_score(cfg: ScoreConfig, storage: Storage, model: ModelRef, device: str) -> InCTRLDetector:
    data = storage.read_bytes(model.uri)
    prompts = prompt_images(cfg, storage, data)
    return load_checkpoint(data, storage, prompts.images, cfg.clip_arch, cfg.clip_weights, len(prompts.images),
                           device=device, object_name=prompts.object_name)


class InCTRLDetector:
    """InCTRL behind the :class:`~pipeline.detectors.base.Detector` protocol. Each image is scored on its own
    against the fixed prompt set (features computed once here), so its score does not depend on its batch.
    ``clip_model`` and ``heads`` must already be on ``device`` (:func:`load_checkpoint` puts them there)."""

    name = "inctrl"
    context_frames = 0  # scores images one by one

    def __init__(self, clip_model: nn.Module, heads: InCTRLHeads, settings: InCTRLSettings, prompts: Tensor,
                 version: str | None = None, device: str = "cpu"):
        check_clip(settings, clip_model)
        self.clip_model = clip_model.eval()
        self.heads = heads.eval()
        self.settings = settings
        self.device = device
        self.image_size = settings.image_size
        self.preprocess = Preprocess(settings.image_size, interpolation=settings.interpolation)
        self.threshold: float | None = None
        self.version = version or checkpoint_version(save_checkpoint(heads, settings, "unsaved"))
        if tuple(prompts.shape) != (settings.shots, 3, self.image_size, self.image_size):
            raise ValueError(f"prompts: expected [{settings.shots},3,{self.image_size},{self.image_size}] "
                             f"(shots={settings.shots}), got {list(prompts.shape)}")
        with torch.inference_mode():
            self.text = text_features(clip_model, settings)
            features = encode_images(clip_model, prompts.to(device), settings.patch_layers)
            self.prompts = group_prompts(features, settings.shots)

    def forward(self, images: Tensor) -> InCTRLOutput:
        """All score parts of ``images`` ``[B,3,H,W]`` (0..1)."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected [N,3,{size},{size}] in 0..1, got {list(images.shape)}")
        with torch.inference_mode():
            query = encode_images(self.clip_model, images.to(self.device), self.settings.patch_layers)
            return inctrl_forward(self.heads, query, self.prompts, self.text, self.settings)

    def score(self, images: Tensor) -> ScoreBatch:
        out = self.forward(images)
        batch, grid = images.shape[0], self.clip_model.visual.grid_size
        maps = out.patch_map.view(batch, 1, *grid)
        maps = F.interpolate(maps, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps[:, 0], self.settings.sigma)
        return ScoreBatch(out.final.float().cpu().numpy(), maps.float().cpu().numpy())
