"""Run the official DMAD image code (github.com/FlappyPeggy/DMAD, DMAD-PPDM) on seeded random weights and small
synthetic images, and store weights, inputs and outputs for tests/test_official_dmad_image.py.

    PYTHONPATH=/path/with/cv2/and/skimage python make_reference.py CHECKOUT OUT_DIR

CHECKOUT is a checkout of the official repository (its DMAD-PPDM folder is imported from there). Patches, applied
in memory only: ``Tensor.cuda`` returns the tensor (CPU run), and inside the classes ``ResNet``, ``BN_layer`` and
``OffsetNet`` of resnet.py and ``ResNet`` of de_resnet.py every channel-width literal 16/64/128/256/512/1024 is
divided by 16 (tiny widths), except on the lines that set the wide base width (``width_per_group``/``base_width``)
and the offset scales (``2 * 8 / 256``). Nothing else in the code changes.

The scores and maps are captured from the official ``test.evaluation`` itself: its ``roc_auc_score`` and ``minmax``
are wrapped to record what they are given, and forward hooks record the encoder's and decoder's features.
"""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import numpy as np
import torch

DIVISOR = 16
N, SIZE = 3, 64  # images, side
TARGETS = {"resnet.py": {"ResNet", "BN_layer", "OffsetNet"}, "de_resnet.py": {"ResNet"}}
KEEP_LINE = re.compile(r"base_width|width_per_group|scale|BasicBlock only supports")


def load_patched(checkout: Path, name: str) -> types.ModuleType:
    path = checkout / "DMAD-PPDM" / name
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name in TARGETS[name]:
            for i in range(node.lineno - 1, node.end_lineno):
                if not KEEP_LINE.search(lines[i]):
                    lines[i] = re.sub(r"(?<![\w.])(16|64|128|256|512|1024)(?![\w.])",
                                      lambda m: str(int(m.group(1)) // DIVISOR), lines[i])
    module = types.ModuleType(name[:-3])
    module.__file__ = str(path)
    exec(compile("".join(lines), str(path), "exec"), module.__dict__)
    sys.modules[name[:-3]] = module
    return module


def load_module(checkout: Path, name: str, module_name: str) -> types.ModuleType:
    path = checkout / "DMAD-PPDM" / name
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


def official_function(checkout: Path, file: str, name: str, scope: dict):
    tree = ast.parse((checkout / "DMAD-PPDM" / file).read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module([fn], []), file, "exec"), scope)
    return scope[name]


def synthetic_images(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``[N,H,W,3]`` uint8 RGB textures (the first plain, the others with a bright blob) and ``[N,H,W]`` masks."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    images, masks = [], []
    for k in range(N):
        base = np.stack([0.4 + 0.2 * np.sin(9 * xx + k), 0.5 + 0.2 * np.cos(7 * yy), 0.3 + 0.3 * xx * yy], -1)
        base = base + 0.05 * rng.standard_normal(base.shape)
        mask = np.zeros((SIZE, SIZE), np.float32)
        if k:
            mask = (((yy - 0.3 * k) ** 2 + (xx - 0.6) ** 2) < 0.01).astype(np.float32)
            base = np.where(mask[..., None] > 0, np.array([0.95, 0.9, 0.1], np.float32), base)
        images.append(np.clip(base * 255, 0, 255).round().astype(np.uint8))
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def randomise(modules: list[torch.nn.Module], g: torch.Generator) -> None:
    """Seeded weights that survive a float16 round trip exactly; batch norms get non-trivial statistics."""
    with torch.no_grad():
        for model in modules:
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    n = module.num_features
                    module.weight.copy_(0.5 + torch.rand(n, generator=g))
                    module.bias.copy_(0.1 * torch.randn(n, generator=g))
                    module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                    module.running_var.copy_(0.5 + torch.rand(n, generator=g))
                elif isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    w = module.weight
                    w.copy_(torch.randn(w.shape, generator=g) / w[0].numel() ** 0.5)
                    if module.bias is not None:
                        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            for t in [*model.parameters(), *model.buffers()]:
                if t.is_floating_point():
                    t.copy_(t.half().float())


def main() -> None:
    checkout, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU run
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    sys.path.insert(0, str(checkout / "DMAD-PPDM"))  # for test.py's ``from dataset import ...``
    resnet = load_patched(checkout, "resnet.py")
    de_resnet = load_patched(checkout, "de_resnet.py")
    official_test = load_module(checkout, "test.py", "official_test")
    loss_fucntion = official_function(checkout, "Train_mvtec.py", "loss_fucntion", {"torch": torch})
    from torchvision import transforms

    encoder, bn, offset = resnet.wide_resnet50_2(pretrained=False, vq=True)
    decoder = de_resnet.de_wide_resnet50_2(pretrained=False)
    randomise([encoder, bn, offset, decoder], g)
    images_u8, masks = synthetic_images(rng)
    normalise = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # as get_data_transforms
    x = normalise(torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255)
    for module in (encoder, bn, offset, decoder):  # eval mode: the batch norms' statistics must not move
        module.eval()
    with torch.no_grad():  # a codebook of perturbed real layer3 vectors, so that the nearest-code choice matters
        layer3 = encoder(offset(x, test=True)[0])[2]
        latents = layer3.permute(0, 2, 3, 1).reshape(-1, layer3.shape[1])
        size = bn.vq3.K
        pick = torch.from_numpy(rng.choice(len(latents), size, replace=True))
        spread = latents.std(0, keepdim=True)
        bn.vq3.embedding.weight.copy_((latents[pick] + 0.3 * spread * torch.randn(size, latents.shape[1], generator=g))
                                      .half().float())
    state = {name: {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}
             for name, m in (("offset", offset), ("bn", bn), ("decoder", decoder))}
    state["encoder"] = {k: v.half() if v.is_floating_point() else v for k, v in encoder.state_dict().items()
                        if not k.startswith(("layer4.", "fc."))}

    recorded: dict[str, list] = {"roc": [], "minmax": [], "enc": [], "dec": [], "warped": []}
    real_roc, real_minmax = official_test.roc_auc_score, official_test.minmax

    def roc(*args, **kwargs):
        recorded["roc"].append(np.array(kwargs.get("y_score", args[1] if len(args) > 1 else None), dtype=np.float64))
        return real_roc(*args, **kwargs)

    def minmax(values):
        recorded["minmax"].append(np.array(values, dtype=np.float64))
        return real_minmax(values)

    official_test.roc_auc_score, official_test.minmax = roc, minmax
    hooks = [encoder.register_forward_hook(lambda m, i, o: recorded["enc"].append([t.clone() for t in o])),
             decoder.register_forward_hook(lambda m, i, o: recorded["dec"].append([t.clone() for t in o])),
             offset.register_forward_hook(lambda m, i, o: recorded["warped"].append(o[0].clone()))]
    gts = torch.from_numpy(masks)[:, None]
    loader = [(x[k:k + 1], gts[k:k + 1], torch.tensor([int(masks[k].max() > 0)]), ["synthetic"]) for k in range(N)]
    result: dict = {}
    for mode in ("sp", "px"):
        for v in recorded.values():
            v.clear()
        auroc = official_test.evaluation(offset, encoder, bn, decoder, loader, "cpu", "synthetic", mode, False)
        raw, _os1, os2 = recorded["minmax"]
        if mode == "sp":
            result.update(map_max=torch.from_numpy(recorded["roc"][0]), deformation_max=torch.from_numpy(os2),
                          official_set_score=torch.from_numpy(recorded["roc"][1]), official_auroc_sp=float(auroc),
                          features=[torch.cat(level) for level in zip(*recorded["enc"], strict=True)],
                          reconstructions=[torch.cat(level) for level in zip(*recorded["dec"], strict=True)],
                          warped=torch.cat(recorded["warped"]))
        else:
            result.update(maps=torch.from_numpy(recorded["roc"][0].reshape(N, SIZE, SIZE)).float(),
                          deformation_maps=torch.from_numpy(os2.reshape(N, SIZE, SIZE)).float())
    for h in hooks:
        h.remove()

    # the official training loss (Train_mvtec.py's loop body) on all images, in train mode (batch statistics)
    offset.train()
    bn.train()
    decoder.train()
    _, warped, offset_loss = offset(x)
    inputs = encoder(warped)
    vq, vq_loss = bn(inputs)
    main_loss = loss_fucntion(inputs, decoder(vq))
    result["train_losses"] = {"reconstruction": main_loss.item(), "offset": offset_loss.item(),
                              "vq": vq_loss.item(), "total": (main_loss + offset_loss + vq_loss).item()}
    torch.save({"state": state, "images_u8": torch.from_numpy(images_u8), "masks": torch.from_numpy(masks),
                "outputs": result}, out / "image.pt")
    print({k: v for k, v in result.items() if k in ("map_max", "deformation_max", "official_set_score",
                                                    "official_auroc_sp", "train_losses")})


if __name__ == "__main__":
    main()
