"""AnomalyCLIP (Zhou et al., ICLR 2024, "Object-agnostic Prompt Learning for Zero-shot Anomaly Detection").

A frozen CLIP compares image and patch embeddings with two *object-agnostic* text embeddings, "[V1..Vn] object"
and "[W1..Wn] damaged object", whose context tokens are learnt on auxiliary labelled data (any objects, with
masks) and then used unchanged on unseen objects:

- textual prompt tuning: the ``n_ctx`` context token embeddings of both prompts are learnable, and in text layers
  ``1..deep_prompt_depth-1`` the first ``deep_prompt_length`` context positions are replaced by further learnable
  tokens (shared by both prompts); the text encoder itself stays frozen;
- DPAM (diagonally prominent attention map): from vision layer ``dpam_start`` on, a second path runs beside the
  original one with V-V self-attention (q and k replaced by v) and no MLP, as CLIP Surgery; the class token (global
  embedding) is taken from the original path and projected *without* ``ln_post``, as the official
  ``VisionTransformer.forward`` (``x_ori[0] @ proj``; so it is not open_clip's ``encode_image``); the patch tokens
  of ``feature_layers`` are taken from the DPAM path (from the original path before ``dpam_start``) and go through
  ``ln_post`` and ``proj``;
- each feature layer gives a 2-channel (normal, anomalous) softmax similarity map at ``1/temperature``; the anomaly
  map is the anomalous channel averaged over the layers, upsampled bilinearly and Gaussian-smoothed;
- the image score is the softmax probability of "anomalous" for the global image embedding (as the official
  ``test.py``; some versions add the map's maximum, which this module does not);
- training: cross-entropy on the image logits plus, for every feature layer, focal loss on the 2-channel map and
  dice loss on each channel (anomalous vs the mask, normal vs its complement).

Layer numbers are 1-based, as in the official code (``features_list=[6, 12, 18, 24]``, DPAM in layers 6..24 of
ViT-L/14: the official ``DPAM_layer=20`` is ``dpam_start = layers - DPAM_layer + 2``).

Details that follow the official code (github.com/zqhang/AnomalyCLIP, checked against it by
``tests/test_official_anomalyclip.py``): positional embeddings are resized *bilinearly* when ``image_size`` differs
from the CLIP's native size (ViT-L/14@336 runs at 518 px); the deep text tokens are rounded to float16 before they
replace the context positions (the official block calls ``.half()`` on them, also in float32 runs); the anomaly
map uses the anomalous softmax channel (the official ``(p1 + 1 - p0) / 2`` is the same number).

Released checkpoints: the authors' prompts were trained with code in which every "feature layer" of the DPAM path
was in fact the last layer (the tokens were appended without a copy and the next blocks added to them in place;
fixed upstream in April 2025, commit 2a7c886). They behave as published only with ``feature_layers=[24]``, which
:mod:`~pipeline.detectors.anomalyclip.importer` writes into the imported checkpoint (upstream's
``train.sh``/``test.sh`` now pass
``--features_list 24`` too, commit cc0cfba); ``[6, 12, 18, 24]`` (the default: the four layers the paper describes)
stays available for prompts trained here.

Remaining differences from the official code, and why:

- the anomaly map is the *mean*, not the sum, of the per-layer maps: same ranking, and it stays in 0..1 for
  thresholds and heatmaps (with the released checkpoint's single layer the two are equal);
- the image score is the official ``test.py`` one (global softmax); some upstream versions add the map maximum;
- the focal loss has no 1e-5 label smoothing and the training loss has no ``lam = 4`` weight on the local terms
  (added upstream after the release; ``focal_weight``/``dice_weight`` set it);
- the official prompt learner's unused ``compound_prompt_projections`` (vision-side, never applied) are not built
  and are dropped on import;
- only open_clip's default residual blocks (``nn.MultiheadAttention``) are supported on the vision side.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.detectors.anomalyclip.settings import CHECKPOINT_FORMAT, RANDOM_FINGERPRINT_PREFIX, AnomalyCLIPSettings
from pipeline.detectors.base import ModelRef, ScoreBatch
from pipeline.detectors.checkpoints import checkpoint_version, pack
from pipeline.features.clip import load_clip, normalize, tokenizer
from pipeline.features.preprocess import Preprocess, gaussian_blur
from pipeline.io.storage import Storage

if TYPE_CHECKING:
    from pipeline.config import ScoreConfig


# ---------------------------------------------------------------- text side: object-agnostic prompts


def _text_tower(clip_model: nn.Module) -> nn.Module:
    """open_clip's ``CLIP`` keeps the text tower on the model, ``CustomTextCLIP`` in ``.text``."""
    return getattr(clip_model, "text", clip_model)


class AnomalyCLIPPrompts(nn.Module):
    """The only trainable tensors: ``ctx`` ``[2, n_ctx, width]`` (normal, anomalous) and ``deep``
    ``[deep_prompt_depth-1, deep_prompt_length, width]``. The tokenised templates are non-persistent buffers, so the
    state dict holds the learnable tensors alone."""

    def __init__(self, settings: AnomalyCLIPSettings, clip_model: nn.Module):
        super().__init__()
        text = _text_tower(clip_model)
        layers = len(text.transformer.resblocks)
        if settings.deep_prompt_depth > layers:
            raise ValueError(f"deep_prompt_depth={settings.deep_prompt_depth} exceeds the {layers} text layers")
        if getattr(text, "cls_emb", None) is not None:
            raise ValueError("text towers with a class token (CoCa) are not supported")
        width = text.token_embedding.weight.shape[1]
        placeholder = " ".join(["X"] * settings.n_ctx)
        ids = tokenizer(settings.clip_arch)([f"{placeholder} object.", f"{placeholder} damaged object."])
        self.n_ctx = settings.n_ctx
        self.register_buffer("token_ids", ids, persistent=False)
        self.ctx = nn.Parameter(torch.randn(2, settings.n_ctx, width) * 0.02)
        self.deep = nn.Parameter(torch.randn(settings.deep_prompt_depth - 1, settings.deep_prompt_length, width) * 0.02)

    def fixed_token_embeddings(self, clip_model: nn.Module) -> Tensor:
        """``[rows, width]``: the token embeddings of both prompts outside the context (start token, then
        "object." / "damaged object.", end token and padding), normal prompt first: what the official prompt
        learner keeps as ``token_prefix_*``/``token_suffix_*`` buffers."""
        tokens = _text_tower(clip_model).token_embedding(self.token_ids)
        return torch.cat([torch.cat([t[:1], t[1 + self.n_ctx:]]) for t in tokens])

    def forward(self, clip_model: nn.Module) -> Tensor:
        """Normalised text embeddings ``[2, embed_dim]``: row 0 normal, row 1 anomalous."""
        text = _text_tower(clip_model)
        ids = self.token_ids
        tokens = text.token_embedding(ids)
        x = torch.cat([tokens[:, :1], self.ctx.to(tokens.dtype), tokens[:, 1 + self.n_ctx:]], dim=1)
        x = x + text.positional_embedding[: x.shape[1]]
        length = self.deep.shape[1]
        for i, block in enumerate(text.transformer.resblocks):
            if 1 <= i <= self.deep.shape[0]:
                deep = self.deep[i - 1].half().to(x.dtype).expand(x.shape[0], -1, -1)  # float16 as official
                x = torch.cat([x[:, :1], deep, x[:, 1 + length:]], dim=1)
            x = block(x, attn_mask=text.attn_mask)
        x = text.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # the end-of-text token
        projection = text.text_projection
        pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
        return F.normalize(pooled, dim=-1)


def token_embedding_sha256(rows: Tensor) -> str:
    """A fingerprint of the CLIP token embeddings a prompt was trained with (:meth:`AnomalyCLIPPrompts.
    fixed_token_embeddings`), rounded to float16 (OpenAI's weights are float16, so every lossless copy agrees)."""
    return "sha256:" + hashlib.sha256(rows.detach().cpu().half().contiguous().numpy().tobytes()).hexdigest()


def build_prompts(settings: AnomalyCLIPSettings, clip_model: nn.Module) -> AnomalyCLIPPrompts:
    """Fresh prompts initialised from ``settings.seed`` (the caller's RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        prompts = AnomalyCLIPPrompts(settings, clip_model)
    return prompts.to(next(clip_model.parameters()).device)


# ---------------------------------------------------------------- vision side: DPAM


def _positional_embedding(visual: nn.Module, grid: int) -> Tensor:
    pos = visual.positional_embedding
    native = math.isqrt(pos.shape[0] - 1)
    if native == grid:
        return pos
    patches = pos[1:].reshape(1, native, native, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def _embed_patches(visual: nn.Module, images: Tensor) -> Tensor:
    """``[B, 1+grid², width]`` tokens before the first block (as open_clip's ``VisionTransformer``)."""
    patch = visual.conv1.kernel_size[0]
    if images.shape[-1] % patch or images.shape[-2] % patch:
        raise ValueError(f"image size {list(images.shape[-2:])} is not a multiple of the patch size {patch}")
    x = visual.conv1(images)
    grid = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + _positional_embedding(visual, grid).to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


def vv_attention(block: nn.Module, x: Tensor) -> Tensor:
    """The DPAM branch of ``block``'s attention on ``x`` (already ``ln_1``-normed): q and k replaced by v."""
    attn: nn.MultiheadAttention = block.attn
    width = x.shape[-1]
    v = F.linear(x, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    b, n, _ = v.shape
    v = v.view(b, n, attn.num_heads, width // attn.num_heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(v, v, v).transpose(1, 2).reshape(b, n, width)
    return attn.out_proj(out)


def _dpam_block(block: nn.Module, x: Tensor, dpam: Tensor | None) -> tuple[Tensor, Tensor]:
    """One block with both paths: the original one unchanged, the DPAM one adds the V-V attention of the original
    path's input (the official dual path) and skips the MLP. The DPAM path starts from the block's input."""
    h = block.ln_1(x)
    dpam = (x if dpam is None else dpam) + block.ls_1(vv_attention(block, h))
    x = x + block.ls_1(block.attn(h, h, h, need_weights=False)[0])
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, dpam


def encode_image(clip_model: nn.Module, images: Tensor, feature_layers: list[int], dpam_start: int
                 ) -> tuple[Tensor, list[Tensor]]:
    """``images``: CLIP-normalised ``[B,3,H,W]``. Returns the global embedding ``[B, embed_dim]`` (unnormalised; the
    class token projected without ``ln_post``, as the official code) and, per feature layer, projected patch tokens
    ``[B, grid², embed_dim]``."""
    visual = clip_model.visual
    blocks = visual.transformer.resblocks
    if max(feature_layers) > len(blocks):
        raise ValueError(f"feature_layers {feature_layers}: the vision tower has {len(blocks)} layers")
    x = _embed_patches(visual, images)
    dpam = None
    taken = []
    for layer, block in enumerate(blocks, start=1):
        if layer >= dpam_start:
            x, dpam = _dpam_block(block, x, dpam)
        else:
            x = block(x)
        if layer in feature_layers:
            taken.append(x if dpam is None else dpam)
    pooled = x[:, 0] @ visual.proj
    patches = [visual.ln_post(t[:, 1:]) @ visual.proj for t in taken]
    return pooled, patches


# ---------------------------------------------------------------- scores, maps and losses


def image_logits(pooled: Tensor, text: Tensor, temperature: float) -> Tensor:
    """``[B, 2]`` logits (normal, anomalous) of the global embeddings."""
    return F.normalize(pooled, dim=-1) @ text.t() / temperature


def similarity_maps(patches: list[Tensor], text: Tensor, temperature: float, size: int) -> list[Tensor]:
    """Per feature layer ``[B, 2, size, size]`` softmax probabilities (normal, anomalous), upsampled after the
    softmax as the official ``get_similarity_map``."""
    maps = []
    for tokens in patches:
        probs = (F.normalize(tokens, dim=-1) @ text.t() / temperature).softmax(dim=-1)
        grid = math.isqrt(probs.shape[1])
        probs = probs.transpose(1, 2).reshape(probs.shape[0], 2, grid, grid)
        maps.append(F.interpolate(probs, size=(size, size), mode="bilinear", align_corners=False))
    return maps


# ---------------------------------------------------------------- checkpoints and the detector


def save_checkpoint(prompts: AnomalyCLIPPrompts, settings: AnomalyCLIPSettings, clip_fingerprint: str) -> bytes:
    """The learnable prompt tensors, the settings and the CLIP fingerprint: plain tensors and strings, so
    :func:`load_checkpoint` can use ``weights_only=True``. CLIP itself is reloaded from the settings."""
    return pack(CHECKPOINT_FORMAT, settings.model_dump_json(), prompts.state_dict(), clip_fingerprint=clip_fingerprint)


def load_checkpoint(data: bytes, storage: Storage, clip_arch: str | None = None, clip_weights: str | None = None,
                    device: str = "cpu") -> AnomalyCLIPDetector:
    """``clip_arch``/``clip_weights`` override the stored ones. Prompts trained against real CLIP weights are
    refused with other weights; prompts trained against a random init (tests, smoke runs) are not checked. An
    imported checkpoint (:mod:`~pipeline.detectors.anomalyclip.importer`) carries ``clip_token_sha256`` instead: the
    CLIP's
    token embeddings must be those the authors trained with, whatever file they come from."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an AnomalyCLIP checkpoint (expected format {CHECKPOINT_FORMAT})")
    settings = AnomalyCLIPSettings.model_validate_json(payload["settings"])
    overrides = {k: v for k, v in {"clip_arch": clip_arch, "clip_weights": clip_weights}.items() if v is not None}
    settings = AnomalyCLIPSettings.model_validate({**settings.model_dump(), **overrides})
    clip_model, fingerprint = load_clip(settings.clip_arch, settings.clip_weights, settings.seed, storage)
    trained_with = payload["clip_fingerprint"]
    token_sha256 = payload.get("clip_token_sha256")
    if (token_sha256 is None and fingerprint != trained_with
            and not trained_with.startswith(RANDOM_FINGERPRINT_PREFIX)):
        raise ValueError(f"CLIP {settings.clip_arch} with weights {settings.clip_weights} has fingerprint "
                         f"{fingerprint}; the prompts were trained with {trained_with}")
    prompts = build_prompts(settings, clip_model)
    try:
        prompts.load_state_dict(payload["state"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint prompts do not fit CLIP {settings.clip_arch}: {exc}") from exc
    if token_sha256 is not None and token_embedding_sha256(prompts.fixed_token_embeddings(clip_model)) != token_sha256:
        raise ValueError(f"clip_weights={settings.clip_weights}: these CLIP token embeddings are not those the "
                         f"prompts were trained with ({trained_with})")
    return AnomalyCLIPDetector(clip_model.to(device), prompts.to(device), settings, fingerprint,
                               version=checkpoint_version(data), device=device)


def load_for_score(cfg: ScoreConfig, storage: Storage, model: ModelRef, device: str) -> AnomalyCLIPDetector:
    return AnomalyCLIPDetector.load(storage, model.uri, cfg.clip_arch, cfg.clip_weights, device=device)


class AnomalyCLIPDetector:
    """AnomalyCLIP behind the :class:`~pipeline.detectors.base.Detector` protocol. The two text embeddings do not
    depend on the image and are computed once here; every image is scored on its own."""

    name = "anomalyclip"
    context_frames = 0  # scores images one by one

    def __init__(self, clip_model: nn.Module, prompts: AnomalyCLIPPrompts, settings: AnomalyCLIPSettings,
                 clip_fingerprint: str, version: str | None = None, device: str = "cpu"):
        self.clip_model = clip_model.eval().to(device)
        self.prompts = prompts.eval().to(device)
        self.settings = settings
        self.device = device
        self.version = version or checkpoint_version(save_checkpoint(prompts, settings, clip_fingerprint))
        self.threshold: float | None = None
        self.image_size = settings.image_size
        self.preprocess = Preprocess(settings.image_size, interpolation=settings.interpolation)
        with torch.no_grad():
            self.text = self.prompts(self.clip_model)

    @classmethod
    def load(cls, storage: Storage, uri: str, clip_arch: str | None = None, clip_weights: str | None = None,
             device: str = "cpu") -> AnomalyCLIPDetector:
        return load_checkpoint(storage.read_bytes(uri), storage, clip_arch, clip_weights, device)

    @classmethod
    def untrained(cls, settings: AnomalyCLIPSettings, storage: Storage, device: str = "cpu") -> AnomalyCLIPDetector:
        """Zero-shot with fresh (seeded, untrained) prompts: works, but the checkpoint is the normal path."""
        clip_model, fingerprint = load_clip(settings.clip_arch, settings.clip_weights, settings.seed, storage)
        return cls(clip_model, build_prompts(settings, clip_model), settings, fingerprint, device=device)

    def score(self, images: Tensor) -> ScoreBatch:
        size, s = self.image_size, self.settings
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected [N,3,{size},{size}] in 0..1, got {list(images.shape)}")
        with torch.inference_mode():
            pooled, patches = encode_image(self.clip_model, normalize(images.to(self.device)), s.feature_layers,
                                           s.dpam_start)
            scores = image_logits(pooled, self.text, s.temperature).softmax(dim=-1)[:, 1]
            maps = torch.stack([m[:, 1] for m in similarity_maps(patches, self.text, s.temperature, size)])
            maps = gaussian_blur(maps.mean(dim=0), s.sigma)
        return ScoreBatch(scores.float().cpu().numpy(), maps.float().cpu().numpy())
