"""The released-prompt importer, on a file in the released format made by the official code itself
(tests/data/official/anomalyclip/prompt_learner.pth: the official ``AnomalyCLIP_PromptLearner`` of a tiny CLIP,
saved as ``{"prompt_learner": state_dict}`` as the authors' ``epoch_15.pth``)."""

import hashlib
import io
import pickle
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from jobs import import_checkpoint as import_job
from pipeline.config import ScoreConfig, StorageSettings
from pipeline.detectors.anomalyclip import CHECKPOINT_FORMAT, AnomalyCLIPDetector
from pipeline.detectors.anomalyclip.importer import convert
from pipeline.detectors.anomalyclip.settings import AnomalyCLIPSettings
from pipeline.detectors.checkpoints import checkpoint_version, pack
from pipeline.io.decode import decode_image
from pipeline.io.storage import Storage
from pipeline.results.rows import read_rows
from pipeline.score import run_score
from tests.helpers.official import ANOMALYCLIP as DATA
from tests.helpers.official import openai_state_file
from tests.helpers.runs import s3_buckets

STORAGE = Storage(StorageSettings())
SOURCE = DATA / "prompt_learner.pth"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def for_tiny_clip(data: bytes) -> bytes:
    """The imported checkpoint with the layer numbers of the 6-layer test CLIP (ViT-L's 24 -> 6, DPAM from 3) and
    its 48 px inputs; everything else, the token check included, as imported."""
    payload = torch.load(io.BytesIO(data), weights_only=True)
    settings = AnomalyCLIPSettings.model_validate_json(payload["settings"]).model_copy(
        update={"feature_layers": [6], "dpam_start": 3, "image_size": 48})
    extra = {k: payload[k] for k in ("clip_fingerprint", "clip_token_sha256")}
    return pack(CHECKPOINT_FORMAT, settings.model_dump_json(), payload["state"], **extra)


def test_released_prompts_import_with_their_settings_and_score_as_the_official_code(tmp_path):
    out = tmp_path / "anomalyclip-released.pt"
    applied = convert(SOURCE, str(out), STORAGE)
    settings = applied["settings"]
    assert settings["feature_layers"] == [24] and settings["dpam_start"] == 6 and settings["image_size"] == 518
    assert settings["clip_arch"] == "ViT-L-14-336" and settings["clip_weights"] == "openai"
    assert (settings["n_ctx"], settings["deep_prompt_depth"], settings["deep_prompt_length"]) == (4, 3, 2)
    assert applied["clip_token_check"] and applied["dropped"] == [
        "compound_prompt_projections.0.bias", "compound_prompt_projections.0.weight",
        "compound_prompt_projections.1.bias", "compound_prompt_projections.1.weight"]
    payload = torch.load(out, weights_only=True)
    assert set(payload["state"]) == {"ctx", "deep"}

    (tmp_path / "tiny.pt").write_bytes(for_tiny_clip(out.read_bytes()))
    weights = str(openai_state_file(tmp_path))
    detector = AnomalyCLIPDetector.load(STORAGE, str(tmp_path / "tiny.pt"), "tiny-vit-openai-test", weights)
    reference = torch.load(DATA / "reference_released.pt", weights_only=True)
    scored = detector.score(torch.load(DATA / "inputs.pt", weights_only=True)["images"])
    torch.testing.assert_close(torch.from_numpy(scored.scores), reference["image_scores"], atol=1e-4, rtol=0)
    official_layers = len(reference["settings"]["features_list"])  # the official map sums 4 copies of layer 6
    torch.testing.assert_close(torch.from_numpy(scored.maps) * official_layers, reference["pixel_maps"], atol=1e-4,
                               rtol=0)


def test_other_clip_weights_are_refused(tmp_path):
    out = tmp_path / "imported.pt"
    convert(SOURCE, str(out), STORAGE)
    (tmp_path / "tiny.pt").write_bytes(for_tiny_clip(out.read_bytes()))
    state = torch.load(openai_state_file(tmp_path), weights_only=True)
    state["token_embedding.weight"][49406] += 0.01  # the start token: same shapes, other weights
    torch.save(state, tmp_path / "other.pt")
    for weights in (str(tmp_path / "other.pt"), "none"):
        with pytest.raises(ValueError, match="token embeddings are not those the prompts were trained with"):
            AnomalyCLIPDetector.load(STORAGE, str(tmp_path / "tiny.pt"), "tiny-vit-openai-test", weights)


class NotATensor:
    pass


@pytest.mark.parametrize(("payload", "message"), [
    ([1, 2], "expected {\"prompt_learner\": state_dict}"),
    ({"state_dict": {}}, "expected {\"prompt_learner\": state_dict}"),
    ({"prompt_learner": {"ctx_pos": torch.zeros(1, 1, 4, 8)}}, r"lacks \['ctx_neg'\]"),
    ({"prompt_learner": {"ctx_pos": torch.zeros(4, 8), "ctx_neg": torch.zeros(4, 8)}}, r"\[1, 1, n_ctx, width\]"),
    ({"prompt_learner": {"ctx_pos": torch.zeros(1, 1, 4, 8), "ctx_neg": torch.zeros(1, 1, 4, 8)}},
     "no compound_prompts_text"),
    ({"prompt_learner": {"ctx_pos": torch.zeros(1, 1, 4, 8), "ctx_neg": torch.zeros(1, 1, 4, 8),
                         "compound_prompts_text.1": torch.zeros(2, 8)}}, r"indices \[1\] are not 0..n-1"),
])
def test_files_that_are_not_released_prompts_are_refused_in_one_line(tmp_path, payload, message):
    source = tmp_path / "source.pth"
    torch.save(payload, source)
    with pytest.raises(ValueError, match=message):
        convert(source, str(tmp_path / "out.pt"), STORAGE)
    assert not (tmp_path / "out.pt").exists()


def test_pickled_objects_are_never_unpickled(tmp_path):
    source = tmp_path / "object.pth"
    torch.save({"prompt_learner": NotATensor()}, source, pickle_module=pickle)
    with pytest.raises(ValueError, match="not a torch checkpoint of plain tensors"):
        convert(Path(source), str(tmp_path / "out.pt"), STORAGE)


def test_import_job_logs_the_release_and_the_checkpoint_scores_through_jobs_score_on_s3(
        ray_runtime, dataset, s3_endpoint, tmp_path):
    """``jobs.import_checkpoint --format anomalyclip`` (MLflow: the source's sha256), then the checkpoint and the
    converted CLIP on s3:// scored by ``jobs.score --model s3://... --clip-weights s3://...``."""
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    local = tmp_path / "models" / "aclip.pt"
    code = import_job.main(["--format", "anomalyclip", "--source", str(SOURCE), "--out", str(local),
                            "--tracking-uri", tracking])
    assert code == 0 and local.is_file()
    client = mlflow.MlflowClient(tracking)
    run = client.search_runs([client.get_experiment_by_name("anomaly-detection").experiment_id])[0]
    assert run.data.params["format"] == "anomalyclip"
    assert run.data.params["source_sha256"] == "sha256:" + hashlib.sha256(SOURCE.read_bytes()).hexdigest()

    settings = StorageSettings(endpoint_url=s3_endpoint, key="testing", secret="testing")
    s3_buckets(s3_endpoint, "models")
    storage = Storage(settings)
    storage.write_bytes("s3://models/aclip-tiny.pt", for_tiny_clip(local.read_bytes()))
    storage.write_bytes("s3://models/clip-openai.pt", openai_state_file(tmp_path).read_bytes())
    summary = run_score(ScoreConfig.model_validate({
        "input": str(dataset / "test"), "detector": "anomalyclip", "model": "s3://models/aclip-tiny.pt",
        "clip_arch": "tiny-vit-openai-test", "clip_weights": "s3://models/clip-openai.pt",
        "output": str(tmp_path / "out"), "run_name": "imported", "storage": settings.model_dump(),
        "runtime": {"workers": 1}, "tracking": {"enabled": False}}))
    rows = read_rows(STORAGE, summary["output"], columns=None)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert {r["model_version"] for r in rows} == {checkpoint_version(storage.read_bytes("s3://models/aclip-tiny.pt"))}
    detector = AnomalyCLIPDetector.load(storage, "s3://models/aclip-tiny.pt", "tiny-vit-openai-test",
                                        "s3://models/clip-openai.pt")
    for row in rows[:2]:
        image = detector.preprocess(decode_image(Path(row["source_uri"]).read_bytes(), 10**8))
        assert np.isclose(row["score"], detector.score(image[None]).scores[0], atol=1e-5)
