"""Inputs stored beside the official references (tests/data/official), shared by the reference and importer tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import faiss
import numpy as np
import torch

from tests.helpers import OFFICIAL

ANOMALYCLIP = OFFICIAL / "anomalyclip"
DMAD = OFFICIAL / "dmad"

def openai_state_file(folder: Path) -> Path:
    """The stored tiny CLIP as OpenAI's TorchScript ``state_dict()`` gives it: full token table, and the
    ``input_resolution``/``context_length``/``vocab_size`` entries that say the weights are OpenAI's."""
    stored = torch.load(ANOMALYCLIP / "clip_tiny.pt", weights_only=True)
    table = torch.zeros(stored["vocab_size"], stored["token_rows"].shape[1])
    table[stored["token_ids"]] = stored["token_rows"]
    state = {**stored["state_dict"], "token_embedding.weight": table, "input_resolution": torch.tensor(32),
             "context_length": torch.tensor(77), "vocab_size": torch.tensor(stored["vocab_size"])}
    path = folder / "clip_openai_layout.pt"
    torch.save(state, path)
    return path


def official_state(layout: str) -> tuple[dict, dict[str, torch.Tensor]]:
    ref = torch.load(DMAD / f"{layout}.pt", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ref["state"].items()}
    background = torch.from_numpy(np.load(DMAD / f"{layout}_background.npz")["u8"].astype(np.float32) / 127.5 - 1)
    state["bkg"] = background.permute(0, 3, 1, 2) if layout == "shanghai" else background[0].permute(2, 0, 1)
    return ref, state



def official_windows(layout: str) -> torch.Tensor:
    """The official DataLoader's windows: 5 frames in -1..1 on channels, ``[T-4, 15, H, W]``."""
    frames = np.load(DMAD / "frames.npz")
    x = frames["bgr"] if layout == "ped2" else np.repeat(frames["gray"][..., None], 3, axis=-1)
    x = torch.from_numpy(x.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    return torch.stack([x[i:i + 5].reshape(15, *x.shape[-2:]) for i in range(len(x) - 4)])


def released_folder(folder: Path, backbone: str = "resnet18", side: int = 64, embed_dim: int = 64,
                    patchsize: int = 3, num_nn: int = 2, n_vectors: int = 300, **overrides) -> Path:
    """What the official ``PatchCore.save_to_path`` writes, with seeded random bank vectors."""
    folder.mkdir(parents=True, exist_ok=True)
    params = {"backbone.name": backbone, "layers_to_extract_from": ["layer2", "layer3"], "input_shape": (3, side, side),
              "pretrain_embed_dimension": 96, "target_embed_dimension": embed_dim, "patchsize": patchsize,
              "patchstride": 1, "anomaly_scorer_num_nn": num_nn} | overrides
    (folder / "patchcore_params.pkl").write_bytes(pickle.dumps(params, pickle.HIGHEST_PROTOCOL))
    index = faiss.IndexFlatL2(embed_dim)
    index.add(np.random.default_rng(0).normal(size=(n_vectors, embed_dim)).astype(np.float32))
    faiss.write_index(index, str(folder / "nnscorer_search_index.faiss"))
    return folder
