"""``jobs.import_checkpoint`` itself: a release folder on S3 is fetched, fingerprinted, converted and logged."""

from __future__ import annotations

import json
import shutil

import mlflow
import torch

from jobs import import_checkpoint as import_job
from pipeline.import_checkpoint import source_sha256
from tests.helpers.official import released_folder
from tests.helpers.runs import s3_buckets


def test_a_release_folder_on_s3_becomes_a_bank_on_s3_logged_with_its_sha256(
        tmp_path, s3_endpoint, seeded_torchvision_resnet18):  # noqa: F811
    fs = s3_buckets(s3_endpoint, "releases")
    local = released_folder(tmp_path / "mvtec_bottle")
    fs.put(str(local), "releases/patchcore/mvtec_bottle", recursive=True)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    assert import_job.main(["--format", "patchcore", "--source", "s3://releases/patchcore/mvtec_bottle",
                            "--out", "s3://releases/banks/bottle", "--s3-endpoint-url", s3_endpoint,
                            "--tracking-uri", tracking]) == 0
    assert json.loads(fs.cat("releases/banks/bottle/latest.json")) == {"version": "v0001"}
    shard = fs.cat("releases/banks/bottle/v0001/index-0000.faiss")
    assert shard == (local / "nnscorer_search_index.faiss").read_bytes()
    client = mlflow.MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("anomaly-detection").experiment_id])
    assert run.data.params["source_sha256"] == source_sha256(local)  # the copy fetched from S3 hashes the same
    assert run.data.params["format"] == "patchcore" and run.data.params["out"] == "s3://releases/banks/bottle"


def test_a_folder_fingerprint_follows_content_and_names_not_location(tmp_path):
    first = released_folder(tmp_path / "a")
    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, copy)
    assert source_sha256(copy) == source_sha256(first)
    (copy / "nnscorer_search_index.faiss").rename(copy / "renamed.faiss")
    assert source_sha256(copy) != source_sha256(first)
    shutil.rmtree(copy)
    shutil.copytree(first, copy)
    data = bytearray((copy / "patchcore_params.pkl").read_bytes())
    data[-2] ^= 1
    (copy / "patchcore_params.pkl").write_bytes(bytes(data))
    assert source_sha256(copy) != source_sha256(first)


def test_a_missing_source_fails_before_any_work_with_one_line(tmp_path, capsys):
    code = import_job.main(["--format", "patchcore", "--source", str(tmp_path / "nothing"),
                            "--out", str(tmp_path / "bank"), "--no-tracking"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nothing" in err
    assert not (tmp_path / "bank").exists()


def test_a_pickled_release_is_refused_without_trust_pickle_with_one_line(tmp_path, capsys):
    source = tmp_path / "ped2.pth"
    torch.save(torch.nn.Linear(2, 2), source)  # a whole pickled module, as the DMAD video releases are
    code = import_job.main(["--format", "dmad", "--source", str(source), "--out", str(tmp_path / "m.pt"),
                            "--no-tracking"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--trust-pickle" in err
    assert not (tmp_path / "m.pt").exists()
