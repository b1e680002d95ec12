"""Every command in the documentation still runs as written.

The documents are README.md, docs/*.md, infra/**/README.md and pipeline/detectors/*/README.md. From
their fenced ``bash`` blocks each command is checked without doing any work:

- ``python -m jobs.X ARGS`` (also after ``ray job submit ... --``): ``jobs.X.main(ARGS + ["--print-config"])``
  runs in this process and must exit 0, so every flag, value, choice and named config file is validated
  the way the job itself validates them. Jobs without ``--print-config`` (``demo``, ``convert_openai_clip``)
  only parse their command line.
- ``python bench/X.py ARGS``: the script exists and defines every ``--flag`` given.
- ``make TARGET``: the Makefile has the target.
- any repository path (``pipeline/...``, ``bench/...``, ``infra/...``, ``docs/...``, ``jobs/...``,
  ``tests/...``) in a command or in backticks in the text exists, and every relative link resolves.

A ``yaml`` block whose first line is ``# file: NAME.yaml`` is the content of a file the commands name
(``--config NAME.yaml``): it is written to the working directory the commands run in.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO_DIRS = ("pipeline", "bench", "infra", "docs", "jobs", "tests")
REPO_PATH = re.compile(r"(?<![\w./:-])((?:" + "|".join(REPO_DIRS) + r")/[\w./*-]*)")
FENCE = re.compile(r"^```(\w*)\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_BREAKS = {"|", "||", "&&", ";", ">", ">>", "2>", "<"}
PRINT_CONFIG = "--print-config"  # the flag appended to every job command


def doc_files(root: Path = ROOT) -> list[Path]:
    return sorted([root / "README.md", *(root / "docs").glob("*.md"), *(root / "infra").glob("**/README.md"),
                   *(root / "pipeline" / "detectors").glob("*/README.md")])


@dataclass(frozen=True)
class Block:
    """A fenced block: its language, the line of its first content line, and its text."""

    lang: str
    line: int
    text: str


def blocks(markdown: str) -> list[Block]:
    found, lang, start, body = [], None, 0, []
    for n, line in enumerate(markdown.splitlines(), 1):
        m = FENCE.match(line.strip())
        if m and lang is None:
            lang, start, body = m.group(1), n + 1, []
        elif line.strip() == "```" and lang is not None:
            found.append(Block(lang, start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return found


def prose(markdown: str) -> str:
    """The text outside fenced blocks."""
    out, inside = [], False
    for line in markdown.splitlines():
        if FENCE.match(line.strip()) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    words: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def commands(doc: str, markdown: str) -> list[Command]:
    """The commands of the ``bash`` blocks: continuation lines joined, comments and here-documents dropped."""
    found = []
    for block in blocks(markdown):
        if block.lang not in ("bash", "sh", "shell"):
            continue
        pending, first, heredoc = "", block.line, None
        for n, line in enumerate(block.text.splitlines(), block.line):
            if heredoc is not None:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            if m := re.search(r"<<-?\s*['\"]?(\w+)", line):
                heredoc = m.group(1)
            if not pending:
                first = n
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            words = shlex.split(pending + line, comments=True)
            pending = ""
            if words:
                found.append(Command(doc, first, tuple(words)))
    return found


def doc_yaml_files(root: Path = ROOT) -> dict[str, str]:
    """``yaml`` blocks that start with ``# file: NAME``: the files the commands use."""
    files = {}
    for path in doc_files(root):
        for block in blocks(path.read_text()):
            first, _, rest = block.text.partition("\n")
            m = re.fullmatch(r"#\s*file:\s*(\S+)\s*", first)
            if block.lang in ("yaml", "yml") and m:
                files[m.group(1)] = rest + "\n"
    return files


def make_targets(root: Path = ROOT) -> set[str]:
    text = (root / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def repo_path_problems(text: str, root: Path = ROOT) -> list[str]:
    """Repository paths in ``text`` that do not exist (``*`` globs). Skipped: templates such as
    ``tests/data/official/<detector>/`` and hidden folders such as ``bench/.work/``, which scripts create."""
    problems = []
    for m in REPO_PATH.finditer(text):
        path = m.group(1).rstrip(".")
        end = m.end(1)
        if (end < len(text) and text[end] in "<{") or any(part.startswith(".") for part in path.split("/")):
            continue
        if "*" in path:
            if not glob.glob(str(root / path)):
                problems.append(f"{path}: matches nothing")
        elif not (root / path).exists():
            problems.append(f"{path}: no such file or folder")
    return problems


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces as hyphens."""
    found: set[str] = set()
    for line in prose(markdown).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n, unique = 0, slug
            while unique in found:
                n += 1
                unique = f"{slug}-{n}"
            found.add(unique)
    return found


def link_problems(doc: Path, markdown: str) -> list[str]:
    """Relative links whose file, or whose ``#anchor`` in a Markdown file, does not exist."""
    problems = []
    for target in LINK.findall(prose(markdown)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = (doc.parent / path) if path else doc
        if not file.exists():
            problems.append(f"link {target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"link {target}: no heading #{anchor} in {path or doc.name}")
    return problems


def job_call(words: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """``("fit", ARGS)`` for a command that runs ``python -m jobs.fit ARGS``, else None."""
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1].startswith("jobs."):
            args = []
            for word in words[i + 2:]:
                if word in SHELL_BREAKS:
                    break
                args.append(word)
            return words[i + 1].removeprefix("jobs."), args
    return None


def bench_call(words: tuple[str, ...]) -> tuple[str, list[str]] | None:
    for i, word in enumerate(words):
        if word.startswith("bench/") and word.endswith(".py") and i > 0 and words[i - 1].endswith("python"):
            return word, [w for w in words[i + 1:] if w.startswith("--")]
    return None


class _Parsed(Exception):
    """Raised once a job without ``--print-config`` has parsed its command line."""


def run_job(job: str, args: list[str]) -> tuple[int, str]:
    """Run ``jobs.<job>.main`` on ``args`` + ``--print-config`` in this process: (exit code, stderr).

    A job whose parser has no ``--print-config`` stops right after parsing, so it never does any work.
    """
    module = importlib.import_module(f"jobs.{job}")
    parse = argparse.ArgumentParser.parse_args

    def parse_only(parser, argv=None, namespace=None):
        if PRINT_CONFIG in parser._option_string_actions:
            return parse(parser, argv, namespace)
        parse(parser, [a for a in argv if a != PRINT_CONFIG], namespace)
        raise _Parsed

    err = io.StringIO()
    argparse.ArgumentParser.parse_args = parse_only
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = module.main([*args, PRINT_CONFIG])
    except _Parsed:
        code = 0
    except SystemExit as exc:  # argparse: an unknown flag or a bad value (2), or --help (0)
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        argparse.ArgumentParser.parse_args = parse
    return code, err.getvalue().strip()


def command_problems(cmd: Command, root: Path = ROOT) -> list[str]:
    """What is wrong with one documented command; empty when it runs as written."""
    problems = repo_path_problems(" ".join(cmd.words), root)
    if cmd.words[0] == "make":
        missing = [t for t in cmd.words[1:] if "=" not in t and not t.startswith("-") and t not in make_targets(root)]
        problems += [f"make {t}: no such target in the Makefile" for t in missing]
    if call := job_call(cmd.words):
        job, args = call
        code, err = run_job(job, args)
        if code != 0:
            problems.append(f"python -m jobs.{job} exits {code}: {err.splitlines()[-1] if err else ''}")
    if call := bench_call(cmd.words):
        script, flags = call
        source = (root / script).read_text() if (root / script).is_file() else ""
        problems += [f"{script} has no flag {f}" for f in flags
                     if f'"{f.split("=", 1)[0]}"' not in source]
    return problems


def all_commands(root: Path = ROOT) -> list[Command]:
    return [c for path in doc_files(root) for c in commands(str(path.relative_to(root)), path.read_text())]


@pytest.fixture
def doc_workdir(tmp_path, monkeypatch):
    """An empty working directory holding the files the documents give in ``# file:`` blocks."""
    for name, text in doc_yaml_files().items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.mark.parametrize("cmd", all_commands(), ids=lambda c: c.where)
def test_documented_command_runs(cmd, doc_workdir):
    assert command_problems(cmd) == [], f"{cmd.where}: {' '.join(cmd.words)}"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_links_exist(doc):
    text = doc.read_text()
    assert repo_path_problems(prose(text)) + link_problems(doc, text) == []


def test_every_document_is_checked():
    names = {str(p.relative_to(ROOT)) for p in doc_files()}
    assert {"README.md", "docs/operations.md", "pipeline/detectors/patchcore/README.md"} <= names
    assert {c.doc for c in all_commands()} >= {"README.md", "docs/configuration.md"}


def test_readme_fits_on_a_screen():
    """The README is the entry point: at most 250 lines, the rest lives in docs/ and the detectors' READMEs,
    and it opens with the two commands a newcomer runs."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first = commands("README.md", readme)[:2]
    assert [c.words[:2] for c in first] == [("make", "demo"), ("make", "test")]


# The checker itself: each mistake a document can make is caught.

def _check(markdown: str, tmp_path: Path) -> list[str]:
    doc = tmp_path / "doc.md"
    doc.write_text(markdown)
    return [p for c in commands("doc.md", markdown) for p in command_problems(c)] + link_problems(doc, markdown)


@pytest.mark.parametrize("markdown, problem", [
    ("```bash\npython -m jobs.fit --normal ./good --bank ./bank --coreset-ration 0.1\n```",
     "unrecognized arguments: --coreset-ration"),
    ("```bash\n.venv/bin/python -m jobs.score --input ./a --bank ./b --output ./r \\\n    --knn-engine gpu\n```",
     "invalid choice: 'gpu'"),
    ("```bash\npython -m jobs.fit --normal ./good --bank ./bank --coreset-ratio 1.5\n```",
     "patchcore.coreset_ratio"),
    ("```bash\npython -m jobs.fit --normal ./good --bank ./bank --config missing.yaml\n```", "missing.yaml"),
    ("```bash\nray job submit --address http://h:8265 -- python -m jobs.score --input a --bank b --outptu c\n```",
     "unrecognized arguments: --outptu"),
    ("```bash\npython -m jobs.demo --work-dir x\n```", "exits 2"),
    ("```bash\nmake demo-all\n```", "make demo-all: no such target"),
    ("```bash\npython bench/bench_gpu.py --devices cpu\n```", "has no flag --devices"),
    ("```bash\nkubectl apply -f infra/kuberay/rayjob-fitt.yaml\n```", "infra/kuberay/rayjob-fitt.yaml: no such file"),
    ("see [the guide](docs/nowhere.md)", "link docs/nowhere.md"),
    ("# Top\n\nsee [below](#the-end)", "no heading #the-end"),
])
def test_checker_catches(markdown, problem, doc_workdir):
    problems = _check(markdown, doc_workdir)
    assert any(problem in p for p in problems), problems


def test_checker_passes_valid_commands(doc_workdir):
    markdown = ("# Fit, score (`jobs.fit`)\n\n```bash\n"
                "python -m jobs.fit --normal ./good --bank ./bank --coreset-ratio 0.5  # a comment\n"
                "make demo\npython -m jobs.demo --workdir x\n```\nsee [fit](#fit-score-jobsfit)\n")
    assert _check(markdown, doc_workdir) == []
