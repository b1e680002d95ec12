"""Run the official DMAD video code (github.com/FlappyPeggy/DMAD, DMAD-PDM) on seeded random weights and small
synthetic clips, and store weights, inputs and outputs for tests/test_official_dmad.py.

    PYTHONPATH=/path/with/cv2 python make_reference.py CHECKOUT OUT_DIR [MASK_BIAS]

CHECKOUT is a checkout of the official repository (its DMAD-PDM folder is imported from there). Patches, applied
in memory only: ``Tensor.cuda`` returns the tensor (CPU run), and inside the classes Encoder, Decoder and OffsetNet
every channel-width literal 32/64/128/256/512 is divided by 8 (tiny widths; nothing else in the code changes).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import torch

MASK_BIAS = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
LAYOUTS = {  # layout -> (memory_dim after the /8 patch, memory_size, colour, scenes)
    "ped2": (32, 12, "bgr", 1),
    "avenue": (64, 12, "gray", 1),
    "shanghai": (32, 12, "gray", 2),
}
T, SIZE, CROP = 9, 256, (slice(112, 144), slice(64, 128))  # frames per clip, frame side, stored crop (rows, cols)


def load_official(checkout: Path, layout: str) -> types.ModuleType:
    path = checkout / "DMAD-PDM" / "model" / f"final_future_prediction_{layout}.py"
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name in {"Encoder", "Decoder", "OffsetNet"}:
            for i in range(node.lineno - 1, node.end_lineno):
                lines[i] = re.sub(r"\b(32|64|128|256|512)\b", lambda m: str(int(m.group(1)) // 8), lines[i])
    module = types.ModuleType(f"official_{layout}")
    exec(compile("".join(lines), str(path), "exec"), module.__dict__)
    return module


def official_ped2_conf_avg(checkout: Path):
    """Evaluate_ped2.py's ``conf_avg`` (defined inside ``MNADEval``), compiled from the official source."""
    tree = ast.parse((checkout / "DMAD-PDM" / "Evaluate_ped2.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "conf_avg")
    scope = {"np": np}
    exec(compile(ast.Module([fn], []), "Evaluate_ped2.py", "exec"), scope)
    return scope["conf_avg"]


def synthetic_frames(rng: np.random.Generator) -> np.ndarray:
    """``[T,H,W,3]`` uint8 BGR: a smooth colour gradient with two blobs moving across it."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    base = np.stack([0.3 + 0.4 * xx, 0.5 + 0.2 * yy, 0.6 - 0.3 * xx * yy], -1)
    frames = []
    for t in range(T):
        f = base.copy()
        for (cy, cx, vy, vx, r, colour) in ((0.4, 0.2, 0.0, 0.03, 0.06, (0.1, 0.2, 0.9)),
                                            (0.7, 0.6, -0.02, 0.01, 0.09, (0.9, 0.8, 0.1))):
            d = (yy - cy - vy * t) ** 2 + (xx - cx - vx * t) ** 2
            f = np.where((d < r * r)[..., None], np.array(colour, np.float32), f)
        frames.append(np.clip(f * 255, 0, 255).round().astype(np.uint8))
    return np.stack(frames)


def randomise(model: torch.nn.Module, g: torch.Generator) -> None:
    """Seeded weights that survive a float16 round trip exactly; batch norms get non-trivial statistics."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))
        for p in model.parameters():
            p.copy_(p.half().float())
        for b in model.buffers():
            if b.is_floating_point():
                b.copy_(b.half().float())


def crop(t: torch.Tensor) -> torch.Tensor:
    """A stored window of a full-resolution tensor ``[..., H, W]`` or ``[B, H, W, 2]``."""
    if t.shape[-1] == 2 and t.ndim == 4:
        return t[:, CROP[0], CROP[1]].clone()
    return t[..., CROP[0], CROP[1]].clone()


def summary(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([t.double().sum(), t.double().abs().sum(), t.double().max()]).float()


def run_layout(official: types.ModuleType, layout: str, frames_bgr: np.ndarray, checkout: Path, seed: int) -> dict:
    dim, msize, colour, scenes = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if colour == "gray":
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames_bgr])
        frames = np.repeat(gray[..., None], 3, axis=-1)
    else:
        frames = frames_bgr
    x = torch.from_numpy(frames.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)  # [T,3,H,W] as DataLoader
    windows = torch.stack([x[i:i + 5].reshape(15, SIZE, SIZE) for i in range(T - 4)])  # [T-4, 15, H, W]
    background_u8 = np.stack([cv2.GaussianBlur(frames[0], (31, 31), 0) // (k + 1) + 40 * k for k in range(scenes)])
    cwd = os.getcwd()
    os.chdir(checkout / "DMAD-PDM")  # ped2/avenue read their background image from the working directory
    try:
        if layout == "shanghai":
            model = official.convAE(3, 5, msize, dim, bkg=background_u8)
        else:
            model = official.convAE(3, 5, msize, dim)
    finally:
        os.chdir(cwd)
    randomise(model, g)
    if layout == "shanghai":  # lift the mask so that some regions pass the official 0.7 threshold
        with torch.no_grad():
            model.decoder.mask[-2].bias.fill_(MASK_BIAS)
    with torch.no_grad():
        bkg = torch.from_numpy(background_u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
        model.bkg.copy_(bkg if layout == "shanghai" else bkg[0])
    scene = torch.tensor([scenes - 1])  # the last background
    model.eval()
    with torch.no_grad():  # a codebook of perturbed real latents, so that the nearest-code choice matters
        enc_in = windows[:, :12] if layout != "shanghai" else torch.cat(
            [windows[:, :12], model.bkg[scene.expand(len(windows))]], 1)
        latents = model.encoder(enc_in)[0].permute(0, 2, 3, 1).reshape(-1, dim)
        pick = torch.from_numpy(rng.choice(len(latents), msize, replace=False))
        model.vq_layer.embedding.weight.copy_((latents[pick] + 0.05 * torch.randn(msize, dim, generator=g)).half())
    # stored: float16 (exact, see randomise), without the background (stored as uint8) and without the weights
    # CoordConv2d creates through its Conv2d base class but never uses (their ``.conv`` sibling is the real one)
    full_state = model.state_dict()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in full_state.items()
             if k != "bkg" and not (k.endswith((".weight", ".bias")) and k.rsplit(".", 1)[0] + ".conv.weight"
                                    in full_state)}

    per_window: dict[str, list] = {"err1": [], "mse2": [], "grad": [], "err2_": [], "fg": []}
    full = {}
    with torch.no_grad():
        for k in range(len(windows)):
            imgs = windows[k:k + 1]
            if layout == "shanghai":
                outputs = model.forward(imgs[:, 0:12], scene, True)
                err_map = model.loss_function(imgs[:, -3:], scene, *outputs, True)
                losses = model.latest_losses()
                per_window["err1"].append(float(losses["err1"]))
                per_window["err2_"].append(float(losses["err2_"]))
                # Evaluate_shanghai.py's mask-region error, transcribed (it is inline in MNADEval)
                mask = outputs[-1].squeeze(0).squeeze(0).cpu().numpy()
                mask = np.where(mask > 0.7, 1, 0).astype(np.uint8)
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                max3 = 0
                for c in range(len(contours)):
                    if cv2.contourArea(contours[c]) > 13:
                        mask_ = cv2.drawContours(np.zeros_like(mask), contours, c, 255, -1).astype(np.float32)
                        err = (mask_ * err_map.squeeze(0).cpu().numpy()).sum() / mask_.sum()
                        max3 = max(max3, err)
                per_window["fg"].append(float(max3))
                error_map = err_map[0]
            else:
                outputs = model.forward(imgs[:, 0:12], True)
                model.loss_function(imgs[:, -3:], *outputs, True)
                losses = model.latest_losses()
                for key in ("err1", "mse2", "grad"):
                    per_window[key].append(float(losses[key]))
                diff = outputs[0] - imgs[:, -3:]
                error_map = (diff.abs() if layout == "ped2" else diff.pow(2)).mean(1)[0]
            if k == 0:
                z_q_t, z_q_, z_q, z_e, _commit, _vq, offset1, offset2, mask0, mask1, mask2 = outputs
                named = {"prediction": z_q_t, "once_warped": z_q_, "encoded": z_e, "coarse": offset1,
                         "fine": offset2, "mask": mask0, "mask_final": mask2, "map": error_map}
                for name, t in named.items():
                    full[name] = {"crop": crop(t) if name != "encoded" else t[..., 8:24, 8:24].clone(),
                                  "summary": summary(t)}

    model.train()  # the official training loss on the first two windows (batch statistics)
    idx = torch.tensor([0, scenes - 1])
    batch = windows[:2]
    if layout == "shanghai":
        outputs = model.forward(batch[:, :12], idx)
        total = model.loss_function(batch[:, -3:], idx, *outputs)
    else:
        outputs = model.forward(batch[:, :12])
        total = model.loss_function(batch[:, -3:], *outputs)
    parts = {k: float(v) for k, v in model.latest_losses().items() if torch.is_tensor(v) or isinstance(v, float)}
    print(layout, "mask > 0.7:", float((outputs[-1] > 0.7).float().mean()))
    parts["total"] = float(total)
    return {"state": state, "background_u8": background_u8, "scene": int(scene),
            "outputs": full, "components": {k: torch.tensor(v) for k, v in per_window.items() if v},
            "train_losses": parts}


def frame_score_references(checkout: Path, seed: int) -> dict:
    """The official frame-score chains on seeded component series: ped2 (per-video inverse min-max, Evaluate_ped2's
    trimmed average, alpha) and shanghai's first, per-video step (utils.conf_avg, size 69, "robust+")."""
    sys.path.insert(0, str(checkout / "DMAD-PDM"))
    import utils as official_utils  # noqa: E402  (the official DMAD-PDM/utils.py)
    conf_avg = official_ped2_conf_avg(checkout)
    rng = np.random.default_rng(seed)
    series = {name: rng.gamma(2.0, 1.0, 40) for name in ("deformation", "reconstruction", "gradient")}
    alpha = {"deformation": 0.2, "reconstruction": 0.4, "gradient": 0.6}
    comb = sum(alpha[k] * np.array(conf_avg(np.array(official_utils.anomaly_score_list_inv(series[k]))))
               for k in alpha)
    long = rng.gamma(2.0, 1.0, 120)
    shanghai = np.array(official_utils.conf_avg(np.array(official_utils.anomaly_score_list_inv(long)),
                                                n_conf="robust+"))
    return {"ped2_series": {k: torch.from_numpy(v) for k, v in series.items()},
            "ped2_official_inverted_score": torch.from_numpy(comb),
            "shanghai_series": torch.from_numpy(long), "shanghai_official_inverted_step": torch.from_numpy(shanghai)}


def main() -> None:
    checkout, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU run
    torch.set_num_threads(1)
    frames = synthetic_frames(np.random.default_rng(0))
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
    np.savez_compressed(out / "frames.npz", bgr=frames, gray=gray)  # the official inputs: BGR, and OpenCV grey
    for seed, layout in enumerate(LAYOUTS):
        result = run_layout(load_official(checkout, layout), layout, frames, checkout, seed)
        np.savez_compressed(out / f"{layout}_background.npz", u8=result.pop("background_u8"))
        torch.save(result, out / f"{layout}.pt")
        print(layout, {k: v.tolist() for k, v in result["components"].items()}, result["train_losses"]["total"])
    torch.save(frame_score_references(checkout, 7), out / "frame_scores.pt")


if __name__ == "__main__":
    main()
