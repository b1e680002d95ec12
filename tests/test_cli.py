"""The job command lines: generated help, --print-config, validation before torch, exit codes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs import evaluate, fit, score, train
from jobs.cli import field_of, job_flags, run_config_job, run_main
from pipeline.config import EvaluateConfig, FitConfig, ScoreConfig, load_config

ROOT = Path(__file__).parent.parent


def _python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _imported(importtime_stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:")}


def _messages(importtime_stderr: str) -> list[str]:
    return [line for line in importtime_stderr.splitlines() if not line.startswith("import time:")]


def test_help_shows_description_default_choices_and_yaml_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        fit.main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert text.startswith("usage: python -m jobs.fit ")
    image_size = FitConfig.model_fields["patchcore"].annotation.model_fields["image_size"].description
    assert f"--image-size N {image_size} (default: 256; YAML: patchcore.image_size)" in text
    assert "choices: resnet18, resnet50, wide_resnet50_2; YAML: patchcore.backbone" in text
    assert "--normal URI" in text and "(required: this flag or --config; YAML: normal)" in text
    assert "(default: 300.0; YAML: runtime.placement_timeout_s)" in text and "--max-restarts N" in text
    assert "CFG:" not in text and "cfg:" not in text
    # our fits inspect the whole image; the paper's centre crop is one flag away, named in the help
    crop = text[text.index("--crop-fraction X"):]
    assert "1 (default): the whole image; 0.875: the paper's and official PatchCore's setting" in crop
    assert "(default: 1.0; YAML: patchcore.crop_fraction)" in crop


def test_every_flag_names_a_described_setting():
    """A flag whose setting is renamed, or lacks a description, fails here rather than at a user's --help."""
    for job, model in [(fit, FitConfig), (score, ScoreConfig), (evaluate, EvaluateConfig)]:
        for flag in job_flags(model, job.FLAGS):
            assert field_of(model, flag.key).description, flag.key
            assert flag.help is None, f"{flag.name}: describe it in the model instead"
    from pipeline.config import TrainConfig

    for flag in job_flags(TrainConfig, train.FLAGS):
        assert field_of(TrainConfig, flag.key).description or flag.help, flag.key


def test_abbreviated_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        fit.main(["--normal", "/a", "--bank", "/b", "--worker", "4"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --worker 4" in capsys.readouterr().err


def test_print_config_round_trips_shows_flags_and_masks_secrets(tmp_path, capsys):
    path = tmp_path / "fit.yaml"
    path.write_text("normal: /data/good\nbank: /banks/a\npatchcore:\n  image_size: 128\n")
    assert fit.main(["--config", str(path), "--print-config", "--workers", "3", "--coreset-ratio", "0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["runtime"]["workers"] == 3 and printed["patchcore"]["coreset_ratio"] == 0.5
    assert printed["patchcore"]["image_size"] == 128 and printed["tracking"]["experiment"] == "anomaly-detection"
    expected = load_config(FitConfig, path, {"runtime.workers": 3, "patchcore.coreset_ratio": 0.5})
    assert FitConfig.model_validate(printed) == expected

    path.write_text("normal: /a\nbank: /b\nstorage:\n  key: AKIAEXAMPLE\n  secret: s3cr3t-value\n")
    assert fit.main(["--config", str(path), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t-value" not in out and "AKIAEXAMPLE" not in out
    storage = yaml.safe_load(out)["storage"]
    assert storage["key"] == storage["secret"] == "***"


def test_bad_value_fails_in_one_line_before_torch_is_imported(tmp_path):
    start = time.perf_counter()
    proc = _python("-X", "importtime", "-m", "jobs.fit", "--coreset-ratio", "1.5", "--normal", "x", "--bank", "y")
    seconds = time.perf_counter() - start
    assert proc.returncode == 2
    (line,) = _messages(proc.stderr)
    assert line.startswith("error: invalid configuration") and "patchcore.coreset_ratio (--coreset-ratio)" in line
    imported = _imported(proc.stderr)
    assert "pydantic" in imported and "torch" not in imported  # the parse above saw the import lines
    assert seconds < 3.0  # importing torch alone takes ~5 s


def test_print_config_does_not_import_torch():
    proc = _python("-X", "importtime", "-m", "jobs.score", "--input", "a", "--bank", "b", "--output", "c",
                   "--print-config")
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["input"] == "a"
    assert "torch" not in _imported(proc.stderr) and not _messages(proc.stderr)


def test_missing_flag_is_named_with_its_yaml_key(capsys):
    assert score.main(["--input", "/a", "--bank", "/b"]) == 2
    assert capsys.readouterr().err == "error: invalid configuration (flags): output (--output): required\n"


def test_alias_bomb_in_config_fails_fast_with_one_short_line(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcde", "bcdef", strict=True)]
    path.write_text("\n".join(levels) + "\n")
    start = time.perf_counter()
    assert fit.main(["--config", str(path), "--normal", "x", "--bank", "y"]) == 2
    assert time.perf_counter() - start < 1.0
    (line,) = capsys.readouterr().err.splitlines()
    assert len(line) < 300 and "anchors and aliases" in line and "line 1" in line



@pytest.mark.parametrize("case", ["deep", "duplicate"])
def test_deep_or_duplicated_yaml_is_one_line_and_exit_2(tmp_path, case):
    """Issue 21: 330 nested brackets (1 KB) gave a 3,000-line RecursionError traceback; a second ``input:``
    was silently taken. Both are one line naming the line of the file, exit 2, before any work."""
    from tests.helpers.hostile_corpus import YAML_DEPTH, deep_yaml, duplicate_key_yaml

    path = deep_yaml(tmp_path / "deep.yaml") if case == "deep" else duplicate_key_yaml(tmp_path / "dup.yaml")
    argv = ["--output", str(tmp_path / "out")] + (["--bank", "/b"] if case == "deep" else [])
    proc = _python("-m", "jobs.score", "--config", str(path), *argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and len(line) < 300, line
    if case == "deep":
        assert path.stat().st_size < 1024 and YAML_DEPTH > 300
        assert line == f"error: --config {path} line 1: nested more than 64 levels deep"
    else:
        assert line == f"error: --config {path} line 4: key 'input' given twice (first on line 1); keep one"



def test_fit_with_a_file_as_bank_fails_before_any_work(dataset, tmp_path):
    """Issue 21: it ran the whole fit, then failed on NotADirectoryError (hours of GPU time on a cluster). The
    limit is on the CPU time the job spends (imports and the check): wall time on a shared CI box also measures
    its neighbours."""
    bank = tmp_path / "afile"
    bank.write_bytes(b"not a folder")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.fit", "--normal", str(dataset / "train" / "good"),
                             "--bank", str(bank), "--no-tracking"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()  # one line, then it exits
    _, status, usage = os.wait4(proc.pid, 0)  # wait4: the child's own CPU time
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
    print(f"jobs.fit --bank FILE: exit {proc.returncode} after {wall:.1f} s ({cpu:.1f} s CPU)")
    assert proc.returncode == 2, err[-2000:]
    assert err.splitlines() == [f"error: bank={bank}: {bank} is an existing file; bank must be a folder"]
    assert cpu < 10, f"{cpu:.1f} s of CPU before failing"
    assert bank.read_bytes() == b"not a folder" and sorted(tmp_path.iterdir()) == [bank]


FAKE_JOBS = {
    "interrupt": ("raise KeyboardInterrupt", 130, "interrupted; re-run with --run-name r1 to resume"),
    "failed_units": ("return {'run_id': 'r1', 'n_units': 40, 'failed_units': ['u1', 'u2', 'u3']}", 3,
                     "error: 3 of 40 work units failed (their inputs have error rows; none has a completion "
                     "marker); re-run with --run-name r1 to retry them"),
    "failed_units_rows_unwritten": (
        "return {'run_id': 'r1', 'n_units': 40, 'failed_units': ['u1', 'u2', 'u3'], "
        "'failed_units_without_rows': ['u2', 'u3']}", 3,
        "error: 3 of 40 work units failed (the inputs of 1 have error rows; the error rows of 2 could not be "
        "written, so their inputs have no rows yet; none has a completion marker); re-run with --run-name r1 to "
        "retry them"),
    "incomplete": ("raise RunIncomplete('run r1: the summary could not be written\\n(storage gone)')", 3,
                   "error: run r1: the summary could not be written (storage gone)"),
    "bug": ("raise ZeroDivisionError('division by zero')", 1, "error: ZeroDivisionError: division by zero"),
    "setup": ("raise SetupError('runtime.workers=9: cannot be placed')", 2,
              "error: runtime.workers=9: cannot be placed"),
    "value_error_in_job": ("raise ValueError('x')", 1, "error: ValueError: x"),
}


@pytest.mark.parametrize("case", FAKE_JOBS)
def test_run_main_exit_codes_and_one_line_on_stderr(case):
    body, code, message = FAKE_JOBS[case]
    script = "\n".join([
        "import logging, sys",
        "from jobs.cli import run_main",
        "from pipeline.errors import RunIncomplete, SetupError",
        "def job():",
        "    logging.getLogger('pipeline.fake').info('progress line')",
        f"    {body}",
        "sys.exit(run_main(job, 'r1', resumable=True))",
    ])
    proc = _python("-c", script)
    assert proc.returncode == code
    assert proc.stderr.splitlines() == [message]
    assert "progress line" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    if case.startswith("failed_units"):
        assert proc.stdout.rstrip().endswith("}") and '"failed_units": [' in proc.stdout


def test_interrupt_names_the_run_name_from_the_config(capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    argv = ["--input", "/a", "--bank", "/b", "--output", "/c"]
    assert run_config_job("prog", "d", ScoreConfig, score.FLAGS, [*argv, "--run-name", "nightly"], interrupted) == 130
    assert capsys.readouterr().err == "interrupted; re-run with --run-name nightly to resume\n"
    assert run_config_job("prog", "d", ScoreConfig, score.FLAGS, argv, interrupted) == 130
    assert capsys.readouterr().err == "interrupted; re-run with the same --run-name to resume\n"
    assert run_config_job("prog", "d", FitConfig, fit.FLAGS, ["--normal", "/a", "--bank", "/b"], interrupted) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_weights_error_is_a_setup_error_and_cli_does_not_import_torch(capsys):
    proc = _python("-c", "import sys, jobs.cli, jobs.fit, jobs.score; print('torch' in sys.modules)")
    assert proc.stdout.strip() == "False"
    from pipeline.errors import WeightsError

    def job():
        raise WeightsError("patchcore.weights=/w.pt: not found")

    assert run_main(job) == 2
    assert capsys.readouterr().err == "error: patchcore.weights=/w.pt: not found\n"
