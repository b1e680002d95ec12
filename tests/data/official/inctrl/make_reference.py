"""Produce the InCTRL reference data by running the OFFICIAL code (github.com/mala-lab/InCTRL).

    PYTHONPATH=CHECKOUT:DEPS python make_reference.py CHECKOUT OUT_DIR

CHECKOUT is a checkout of mala-lab/InCTRL (its ``open_clip`` package must shadow the pip one, hence PYTHONPATH);
DEPS holds what the official package imports and this product does not install (iopath, fvcore, yacs, simplejson,
...). Writes into OUT_DIR:

- ``inputs/{category}_prompt{j}.png``, ``inputs/{category}_query{i}.png``: smooth seeded 240 px images (uint8);
- ``checkpoint.pyth.gz``: the official model's ``state_dict`` saved as the official training loop saves it
  (``torch.save(model.state_dict(), path)``), gzipped; a tiny seeded CLIP (``TINY_CONFIG``) with the official
  adapter and heads;
- ``reference.pt``: per query, what the official forward pass computes (hooks on the official modules).

The official code is run unmodified on CPU: ``Tensor.cuda`` and ``Tensor.to('cuda')`` are made no-ops at run time.
Queries run one at a time (the official test batch size is 1; larger batches mix images up in its reshapes).
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TINY_CONFIG = {
    "embed_dim": 640,  # the official adapter and image head are hard-wired to 640
    "vision_cfg": {"image_size": 240, "layers": 12, "width": 16, "head_width": 8, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
CATEGORIES = ["candle", "bird"]  # "bird" takes the official CIFAR-10 text branch
SHOTS = 2
QUERIES = 2
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


def run_on_cpu() -> None:
    """The official forward calls ``.cuda()`` and ``.to('cuda')``; keep every tensor where it is."""
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and args[0] == "cuda":
            return self
        return original_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.to = to


def smooth_image(generator: torch.Generator, base: torch.Tensor | None = None) -> torch.Tensor:
    """A 0..1 image ``[3,240,240]`` quantised to uint8 steps: bilinear-upsampled 6x6 noise (PNG-compressible)."""
    noise = torch.rand(1, 3, 6, 6, generator=generator)
    image = F.interpolate(noise, size=(240, 240), mode="bilinear", align_corners=False)[0]
    if base is not None:
        image = 0.8 * base + 0.2 * image
    return (image * 255).round() / 255


def with_defect(image: torch.Tensor) -> torch.Tensor:
    out = image.clone()
    out[:, 100:148, 60:108] = torch.tensor([0.95, 0.1, 0.1]).view(3, 1, 1)
    return out


def save_png(image: torch.Tensor, path: Path) -> torch.Tensor:
    """Save as 8-bit PNG and return the image as read back (what the test feeds our model)."""
    Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(path)
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)


def seeded_model(open_clip, tokenizer):
    torch.manual_seed(0)
    model = open_clip.model.InCTRL(None, TINY_CONFIG["embed_dim"], TINY_CONFIG["vision_cfg"],
                                   TINY_CONFIG["text_cfg"], False, cast_dtype=None)
    generator = torch.Generator().manual_seed(1)
    state = model.state_dict()
    for name, tensor in state.items():  # make the norms and batch norms non-trivial
        if name.endswith("running_var"):
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        elif name.endswith("running_mean") or (("ln_" in name or "bn" in name) and name.endswith("bias")):
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
        elif ("ln_" in name or "bn" in name) and name.endswith("weight"):
            tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
    used = set()  # rows of the token embedding no prompt text uses are zeroed (the file then gzips small)
    for category in CATEGORIES:
        normal, anomalous = open_clip.model.get_texts(category)
        used |= set(tokenizer(normal + anomalous).unique().tolist())
    keep = torch.zeros(TINY_CONFIG["text_cfg"]["vocab_size"], dtype=torch.bool)
    keep[list(used)] = True
    state["token_embedding.weight"][~keep] = 0
    model.load_state_dict(state)
    return model.eval()


class Recorder:
    """What goes in and comes out of the official modules. The official forward calls ``module.forward(...)``
    directly, which skips forward hooks, so each instance's ``forward`` is wrapped instead."""

    NAMES = ("visual", "adapter", "diff_head_ref", "diff_head")

    def __init__(self, model):
        self.model = model
        self.calls: dict[str, list] = {}
        for name in self.NAMES:
            module = getattr(model, name)
            module.forward = self._wrap(name, module.forward)

    def _wrap(self, name, forward):
        def recorded(*inputs):
            output = forward(*inputs)
            self.calls.setdefault(name, []).append((inputs, output))
            return output
        return recorded

    def remove(self) -> None:
        for name in self.NAMES:
            del getattr(self.model, name).forward


def main(checkout: Path, out_dir: Path) -> None:
    sys.path.insert(0, str(checkout))
    import open_clip  # the official package

    assert Path(open_clip.__file__).resolve().is_relative_to(checkout.resolve()), open_clip.__file__
    run_on_cpu()
    tokenizer = open_clip.get_tokenizer("ViT-B-16-plus-240")
    model = seeded_model(open_clip, tokenizer)
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    (out_dir / "checkpoint.pyth.gz").write_bytes(gzip.compress(buffer.getvalue(), mtime=0))

    generator = torch.Generator().manual_seed(2)
    reference: dict[str, torch.Tensor] = {}
    for category in CATEGORIES:
        prompts = [smooth_image(generator) for _ in range(SHOTS)]
        queries = [smooth_image(generator, prompts[0]), with_defect(smooth_image(generator, prompts[1]))]
        prompts = [save_png(image, out_dir / "inputs" / f"{category}_prompt{j}.png") for j, image in enumerate(prompts)]
        queries = [save_png(image, out_dir / "inputs" / f"{category}_query{i}.png") for i, image in enumerate(queries)]
        # what a released few-shot file holds: a list of CLIP-normalised [3,240,240] tensors
        normal_list = [(p - MEAN) / STD for p in prompts]
        for i, image in enumerate(queries):
            recorder = Recorder(model)
            with torch.no_grad():
                final, image_score = model(tokenizer, [((image - MEAN) / STD)[None]], [category], normal_list)
            reference.update(official_parts(recorder, final, image_score, f"{category}/query{i}"))
            recorder.remove()
    torch.save(reference, out_dir / "reference.pt")
    print({k: tuple(v.shape) for k, v in reference.items()})


def official_parts(recorder: Recorder, final, image_score, key: str) -> dict[str, torch.Tensor]:
    """The official forward's intermediate values for one query; the text prior and the patch map are recovered
    from the holistic head's input ``text + image + patch_map`` and ``max(patch_map)`` = ``2*final - holistic``."""
    (_, query_visual), (_, prompt_visual) = recorder.calls["visual"]  # inputs: (images, out_layers)
    query_global, query_layers, _ = query_visual
    prompt_global, prompt_layers, _ = prompt_visual
    (holistic_in,), holistic = recorder.calls["diff_head"][0]
    (residual,), image_head = recorder.calls["diff_head_ref"][0]
    patch_max = 2 * final - holistic[:, 0]
    offset = holistic_in.amax(dim=1) - patch_max  # text + image scores
    patch_map = holistic_in - offset[:, None]
    parts = {
        "query_global": query_global[0], "query_tokens": torch.stack(query_layers)[:, 0, 1:],
        "prompt_global": prompt_global, "prompt_tokens": torch.stack(prompt_layers)[:, :, 1:],
        "adapter_query": recorder.calls["adapter"][0][1][0], "adapter_prompts": recorder.calls["adapter"][1][1],
        "residual": residual[0], "image": image_head[0, 0], "image_returned": image_score[0],
        "holistic_input": holistic_in[0], "holistic": holistic[0, 0], "patch_map": patch_map[0],
        "text": offset[0] - image_head[0, 0], "final": final[0],
    }
    return {f"{key}/{name}": value.detach().clone().contiguous() for name, value in parts.items()}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
