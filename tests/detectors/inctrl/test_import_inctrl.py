"""The InCTRL importer on synthetic files in the authors' released format, and their few-shot prompt files."""

import io
from collections import OrderedDict
from pathlib import Path

import mlflow
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from jobs import import_checkpoint as import_job
from pipeline.config import ScoreConfig, StorageSettings
from pipeline.detectors.checkpoints import checkpoint_version
from pipeline.detectors.inctrl import load_checkpoint, prompt_texts, read_prompt_file
from pipeline.detectors.inctrl.importer import convert, match_clip_arch
from pipeline.detectors.inctrl.settings import InCTRLSettings
from pipeline.features.clip import CLIP_MEAN, CLIP_STD, register_tiny_configs
from pipeline.io.decode import decode_image
from pipeline.io.storage import Storage
from pipeline.results.rows import read_rows
from pipeline.score import run_score
from tests.helpers.runs import s3_buckets

STORAGE = Storage(StorageSettings())
ARCH = "tiny-inctrl-test"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def official_head(generator: torch.Generator, prefix: str, dim_in: int) -> dict[str, torch.Tensor]:
    """The official ``TransformerBasicHead``'s tensors: projection1..3 and bn1..3 (bn1 is built, never used)."""
    state = {}
    for i, (n_in, n_out) in enumerate([(dim_in, 128), (128, 64), (64, 1)], start=1):
        state[f"{prefix}.projection{i}.weight"] = torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5
        state[f"{prefix}.projection{i}.bias"] = 0.1 * torch.randn(n_out, generator=generator)
    for i, width in enumerate([dim_in, 128, 64], start=1):
        state[f"{prefix}.bn{i}.weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
        state[f"{prefix}.bn{i}.bias"] = 0.1 * torch.randn(width, generator=generator)
        state[f"{prefix}.bn{i}.running_mean"] = 0.1 * torch.randn(width, generator=generator)
        state[f"{prefix}.bn{i}.running_var"] = 0.5 + torch.rand(width, generator=generator)
        state[f"{prefix}.bn{i}.num_batches_tracked"] = torch.tensor(100)
    return state


def released_state(seed: int = 0) -> OrderedDict:
    """What the official training loop saves: ``InCTRL.state_dict()`` (a CLIP without logit_scale, adapter.fc,
    diff_head_ref on the 640-d residual, diff_head on the 225 patch residuals)."""
    register_tiny_configs()
    torch.manual_seed(seed)
    clip = open_clip.create_model(ARCH, pretrained=None).state_dict()
    del clip["logit_scale"]
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict(clip)
    state["adapter.fc.0.weight"] = torch.randn(160, 640, generator=generator) / 640 ** 0.5
    state["adapter.fc.2.weight"] = torch.randn(640, 160, generator=generator) / 160 ** 0.5
    state.update(official_head(generator, "diff_head", 225))
    state.update(official_head(generator, "diff_head_ref", 640))
    return state


def apply_official_head(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """The official head's forward (projection, ReLU, batch norm twice, projection, sigmoid) in eval mode."""
    for i in (1, 2):
        x = F.relu(F.linear(x, state[f"{prefix}.projection{i}.weight"], state[f"{prefix}.projection{i}.bias"]))
        bn = f"{prefix}.bn{i + 1}"
        x = F.batch_norm(x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                         state[f"{bn}.bias"])
    return torch.sigmoid(F.linear(x, state[f"{prefix}.projection3.weight"], state[f"{prefix}.projection3.bias"]))


def released_prompt_file(path: Path, images: torch.Tensor) -> Path:
    """An authors' few-shot file: a list of CLIP-normalised [3,240,240] tensors."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.save([(image - mean) / std for image in images], path)
    return path


def smooth_images(n: int, seed: int) -> torch.Tensor:
    noise = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(240, 240), mode="bilinear", align_corners=False)


def test_convert_maps_every_official_tensor(tmp_path):
    state = released_state()
    torch.save(state, tmp_path / "checkpoint.pyth")
    applied = convert(tmp_path / "checkpoint.pyth", str(tmp_path / "inctrl.pt"), STORAGE)
    assert applied["clip_arch"] == ARCH and applied["clip_weights"] == str(tmp_path / "inctrl.pt.clip.pt")
    assert applied["settings"]["patch_layers"] == [7, 9, 11] and applied["settings"]["image_size"] == 240
    assert any("negated" in note for note in applied["notes"])

    detector = load_checkpoint((tmp_path / "inctrl.pt").read_bytes(), STORAGE, smooth_images(2, 1), shots=2)
    clip = torch.load(tmp_path / "inctrl.pt.clip.pt", weights_only=True)
    assert all(torch.equal(clip[k], v) for k, v in state.items() if k in clip) and len(clip) == 1 + sum(
        not k.startswith(("adapter.", "diff_head")) for k in state)
    heads, x = detector.heads, torch.randn(5, 640)
    with torch.no_grad():
        adapter = F.relu(F.linear(F.relu(F.linear(x, state["adapter.fc.0.weight"])), state["adapter.fc.2.weight"]))
        torch.testing.assert_close(heads.adapter(x), adapter)
        # ours scores query - prompts, the official prompts - query: the same score for the same images
        torch.testing.assert_close(heads.image_head(x), apply_official_head(state, "diff_head_ref", -x))
        patch = torch.rand(5, 225)
        torch.testing.assert_close(heads.holistic_head(patch), apply_official_head(state, "diff_head", patch))


def test_import_job_converts_and_logs_to_mlflow(tmp_path):
    torch.save(released_state(), tmp_path / "checkpoint.pyth")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    code = import_job.main(["--format", "inctrl", "--source", str(tmp_path / "checkpoint.pyth"),
                            "--out", str(tmp_path / "models" / "inctrl.pt"), "--tracking-uri", tracking])
    assert code == 0 and (tmp_path / "models" / "inctrl.pt").is_file()
    run = mlflow.MlflowClient(tracking).search_runs(
        [mlflow.MlflowClient(tracking).get_experiment_by_name("anomaly-detection").experiment_id])[0]
    assert run.data.params["format"] == "inctrl" and run.data.params["source_sha256"].startswith("sha256:")


def test_imported_checkpoint_scores_through_the_job_on_s3(ray_runtime, dataset, s3_endpoint, tmp_path):
    """convert to s3://, then jobs.score --model s3://... --prompts s3://.../candle.pt (a released few-shot file)."""
    settings = StorageSettings(endpoint_url=s3_endpoint, key="testing", secret="testing")
    fs = s3_buckets(s3_endpoint, "models")
    torch.save({"epoch": 10, "model_state": released_state(), "cfg": "TEST:\n  ENABLE: true\n"},
               tmp_path / "checkpoint.pyth")  # the official save_checkpoint container
    storage = Storage(settings)
    applied = convert(tmp_path / "checkpoint.pyth", "s3://models/inctrl.pt", storage)
    assert applied["clip_weights"] == "s3://models/inctrl.pt.clip.pt" and fs.exists("models/inctrl.pt.clip.pt")
    prompts = smooth_images(2, 3)
    fs.put(str(released_prompt_file(tmp_path / "metal_nut.pt", prompts)), "models/fs/metal_nut.pt")

    summary = run_score(ScoreConfig.model_validate({
        "input": str(dataset / "test"), "detector": "inctrl", "model": "s3://models/inctrl.pt",
        "prompts": "s3://models/fs/metal_nut.pt", "output": str(tmp_path / "out"), "run_name": "imported",
        "storage": settings.model_dump(), "runtime": {"workers": 1}, "tracking": {"enabled": False}}))
    rows = read_rows(STORAGE, summary["output"], columns=None)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert {r["model_version"] for r in rows} == {checkpoint_version(storage.read_bytes("s3://models/inctrl.pt"))}

    # the same scores as the detector built by hand with the file's images and class name
    detector = load_checkpoint(storage.read_bytes("s3://models/inctrl.pt"), storage, prompts, shots=2,
                               object_name="metal nut")
    row = rows[0]
    image = detector.preprocess(decode_image(Path(row["source_uri"]).read_bytes(), 10**8))
    assert np.isclose(row["score"], detector.score(image[None]).scores[0], atol=1e-5)


def test_prompt_file_reads_back_images_and_names_the_class(tmp_path):
    images = smooth_images(3, 0)
    path = released_prompt_file(tmp_path / "pipe_fryum.pt", images)
    prompts = read_prompt_file(path.read_bytes(), str(path), 240, None)
    assert prompts.object_name == "pipe fryum" and prompts.images.shape == (3, 3, 240, 240)
    torch.testing.assert_close(prompts.images, images, atol=1e-6, rtol=0)
    stacked = tmp_path / "stacked.pt"
    torch.save(torch.load(path, weights_only=True), stacked)
    assert read_prompt_file(stacked.read_bytes(), str(stacked), 240, 3).images.shape[0] == 3


def test_prompt_file_and_checkpoint_errors_are_one_line(tmp_path):
    path = released_prompt_file(tmp_path / "candle.pt", smooth_images(2, 0))
    with pytest.raises(ValueError, match=r"shots=4 but prompts=.*candle.pt holds 2 images"):
        read_prompt_file(path.read_bytes(), str(path), 240, 4)
    with pytest.raises(ValueError, match=r"expected a list of float tensors \[3,64,64\]"):
        read_prompt_file(path.read_bytes(), str(path), 64, None)
    buffer = io.BytesIO()
    torch.save({"images": [1, 2]}, buffer)
    with pytest.raises(ValueError, match="expected a list of float tensors"):
        read_prompt_file(buffer.getvalue(), "x.pt", 240, None)

    with pytest.raises(ValueError, match="expected the released InCTRL checkpoint file"):
        convert(tmp_path / "missing.pyth", str(tmp_path / "o.pt"), STORAGE)
    torch.save(Path("pickled-object"), tmp_path / "object.pyth")
    with pytest.raises(ValueError, match="not a checkpoint of plain tensors"):
        convert(tmp_path / "object.pyth", str(tmp_path / "o.pt"), STORAGE)
    state = released_state()
    del state["diff_head.projection1.weight"]
    torch.save(state, tmp_path / "partial.pyth")
    with pytest.raises(ValueError, match="missing diff_head.projection1.weight"):
        convert(tmp_path / "partial.pyth", str(tmp_path / "o.pt"), STORAGE)
    state = released_state()
    state["visual.proj"] = torch.zeros(16, 512)
    torch.save(state, tmp_path / "other.pyth")
    with pytest.raises(ValueError, match="match no open_clip architecture"):
        convert(tmp_path / "other.pyth", str(tmp_path / "o.pt"), STORAGE)
    assert not (tmp_path / "o.pt").exists()


def test_official_text_prompts():
    normal, anomalous = prompt_texts(InCTRLSettings(object_name="candle"))
    assert len(normal) == 7 * 22 and len(anomalous) == 4 * 22 and "a photo of the damaged candle." in anomalous
    assert prompt_texts(InCTRLSettings(object_name="bird")) == (["a photo of bird for anomaly detection."],
                                                                ["a photo without bird for anomaly detection."])


def test_the_authors_clip_resolves_to_vit_b_16_plus_240():
    """The released CLIP's shapes (built on the meta device: no memory, no weights) name exactly one
    architecture, the authors' GELU ViT-B-16-plus-240 (not a QuickGELU variant)."""
    with torch.device("meta"):
        state = open_clip.create_model("ViT-B-16-plus-240", pretrained=None, device="meta").state_dict()
    del state["logit_scale"]
    assert match_clip_arch(state) == "ViT-B-16-plus-240"
