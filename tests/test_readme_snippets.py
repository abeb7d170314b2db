"""Every command and code snippet in README.md, and in the dataset cards `batchgen export`
writes, is run here, taken from the text itself, so the text cannot drift from what the code does.

The documents are read as Markdown: fenced blocks (```python, ```toml, ...) and indented blocks.
In order, in a scratch folder holding copies of jobs/ and sample_data/:
- a `batchgen ...` command line (also after `.venv/bin/`, inside `a && b`, before `| jq`) runs
  as a real process and must exit 0 or 1 (1: some task errors, which the simulator makes on
  purpose); a synopsis (`batchgen run SOURCE [OPTIONS]`) must name a command and options the
  CLI has; a command that cannot run on loopback (PARSE_ONLY below, each with why) is parsed
  by the CLI instead: its options, choices and types checked, nothing run;
- a Python block runs (a fenced one), and any WebDataset or `datasets` object it leaves is read
  to its end (a lazy reader finds a missing shard only then); an indented Python block talks to
  a simulator on a port the reader chooses (`P`), so it is compiled;
- a TOML job file is written to jobs/ and planned; CSV and JSON blocks are parsed.
Other programs (pip, ruff, jq, curl, eval, export VAR=...) are the reader's shell's, not run.
No token is ever in the environment: a command that would need one cannot reach an API.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import click
import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = ("batchgen", ".venv/bin/batchgen")


def _to(argv: list) -> str:
    return argv[argv.index("--to") + 1] if "--to" in argv[:-1] else ""


def _loopback(argv: list) -> bool:
    return any(arg.startswith(("http://127.0.0.1", "http://localhost")) for arg in argv)


# Commands that cannot run on loopback, each with the reason; they are parsed instead.
PARSE_ONLY: list[tuple[str, Callable[[list], bool]]] = [
    # A real run: it needs ACEDATA_API_TOKEN or OPENAI_API_KEY and sends to a real API.
    ("a real API's token", lambda argv: argv[0] == "run" and "--simulate" not in argv and not _loopback(argv)),
    # Cancels batches on OpenAI's Batch API, with a real key.
    ("OpenAI's Batch API", lambda argv: argv[0] == "cancel"),
    # Serves until Ctrl-C: the tests start the simulator themselves.
    ("a server that runs until stopped", lambda argv: argv[0] == "simulate"),
    # An export to S3 or another remote store, with its credentials.
    ("a remote destination", lambda argv: argv[0] == "export" and "://" in _to(argv)),
    # Through a LiteLLM proxy the reader starts on 127.0.0.1:4000 (tests/test_litellm_proxy.py
    # runs the real one where it is installed).
    ("a LiteLLM proxy of the reader's", lambda argv: any(a.startswith("http://127.0.0.1:4000") for a in argv)),
    # `batchgen run ... --no-wait`: the dots stand for the options of the line above.
    ("an elided command line", lambda argv: "..." in argv),
]
# What marks a synopsis rather than a command: [OPTIONS], a|b choices, NAMES IN CAPITALS.
_PLACEHOLDER = re.compile(r"^\[|\]$|^[A-Z][A-Z_]*$|^[a-z]+\|[a-z|]+$")
_OPTION = re.compile(r"--[a-z][a-z0-9-]*")


@dataclass
class Block:
    kind: str          # "shell", "python", "toml", "csv", "json", or another fence's language
    text: str
    line: int          # where it starts in the document (1-based)
    fenced: bool


def blocks(markdown: str) -> list[Block]:
    """The code blocks of a Markdown text, in order: fenced ones (``` or ~~~, any indentation up
    to three spaces) by their language; indented ones (four spaces after a blank line) as
    shell, or Python when they start with an import."""
    found: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    previous_blank = True
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence:
            marker, language = fence.group(1), fence.group(2).lower()
            body, i = [], i + 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i])
                i += 1
            found.append(Block(language or "text", textwrap.dedent("\n".join(body)), i - len(body) + 1, True))
            i += 1
            previous_blank = False
            continue
        if previous_blank and line.startswith("    ") and line.strip():
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            found += _indented(body, start + 1)
            previous_blank = not lines[i - 1].strip()
            continue
        previous_blank = not line.strip()
        i += 1
    return found


_SHELL_START = re.compile(r"^(curl|wget|export|eval|pip|python3? -m|\.venv/|batchgen|[A-Z_]+=)")


def _indented(body: list, line: int) -> list:
    """An indented block: Python when it starts with an import (its paragraphs that read as
    shell commands, such as a curl beside the SDK call, apart), else shell."""
    paragraphs: list = []        # (first line, lines)
    for k, text in enumerate(body):
        if text.strip() and (k == 0 or not body[k - 1].strip()):
            paragraphs.append((line + k, []))
        if paragraphs:
            paragraphs[-1][1].append(text)
    first = next((t for t in body if t.strip() and not t.startswith("#")), "")
    if not re.match(r"(from \S+ )?import \w", first):
        return [Block("shell", "\n".join(body).rstrip(), line, False)]
    found: list = []
    for start, texts in paragraphs:
        kind = "shell" if _SHELL_START.match(texts[0]) else "python"
        if found and found[-1].kind == kind == "python":
            found[-1].text += "\n\n" + "\n".join(texts).rstrip()
        else:
            found.append(Block(kind, "\n".join(texts).rstrip(), start, False))
    return found


_EXITS = re.compile(r"#.*\bexits? (\d)\b")


def commands(shell: str) -> list[tuple[list[str], set]]:
    """The batchgen command lines of a shell block, as (argv without the program name, the
    exit statuses it may end with): lines joined at a trailing backslash, comments dropped, each
    of `a && b ; c | d` looked at, VAR=value before the program skipped. A command exits 0 or 1,
    or as its comment says ("# exits 3")."""
    found = []
    for line in re.sub(r"\\\n\s*", " ", shell).splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:       # not shell (a log line, a listing)
            continue
        said = _EXITS.search(line)
        exits = {0, 1} | ({int(said.group(1))} if said else set())
        part: list[str] = []
        for word in words + ["&&"]:
            if word in ("&&", "||", ";", "|"):
                while part and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", part[0]):
                    part = part[1:]
                if len(part) > 1 and part[0] in PROGRAMS:
                    found.append((part[1:], exits))
                part = []
            else:
                part.append(word)
    return found


# ---- running them ------------------------------------------------------------------------

def _environment(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACEDATA_API_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return {**env, "HF_HOME": str(home / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def parse(argv: list) -> Optional[str]:
    """What is wrong with a command line, as the CLI parses it (nothing is run), or None."""
    from batchgen.cli.main import main
    ctx = click.Context(main, info_name="batchgen")
    command = main.get_command(ctx, argv[0])
    if command is None:
        return f"no command {argv[0]!r}"
    try:
        with ctx:
            command.make_context(argv[0], list(argv[1:]), parent=ctx)
    except click.ClickException as e:
        return e.format_message()
    return None


def check_synopsis(argv: list) -> Optional[str]:
    from batchgen.cli.main import main
    ctx = click.Context(main, info_name="batchgen")
    command = main.get_command(ctx, argv[0])
    if command is None:
        return f"no command {argv[0]!r}"
    known = {name for p in command.params for name in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    unknown = [o for o in _OPTION.findall(" ".join(argv[1:])) if o not in known]
    return f"{argv[0]} has no option {', '.join(unknown)}" if unknown else None


_CONSUME = textwrap.dedent("""
    import runpy, sys
    found = runpy.run_path(sys.argv[1], run_name="__main__")
    for value in list(found.values()):
        # A lazy reader (WebDataset, a datasets dataset) finds a missing shard or file only
        # when read: read it to its end.
        if type(value).__module__.split(".")[0] in ("webdataset", "datasets") and hasattr(value, "__iter__"):
            for _ in value:
                pass
""")


class Runner:
    """Runs a document's blocks in one scratch folder, in order, and collects what failed."""

    def __init__(self, where: Path):
        self.where = where
        self.env = _environment(where)
        self.failures: list[str] = []
        self.ran: list[str] = []

    def fail(self, block: Block, what: str, why: str) -> None:
        self.failures.append(f"line {block.line}: {what}\n    {why.strip()[-1500:]}")

    def block(self, block: Block, source: str) -> None:
        if block.kind in ("shell", "bash", "sh", "console", "text"):
            for argv, exits in commands(block.text):
                self.command(block, argv, exits)
        elif block.kind in ("python", "py"):
            if block.fenced:
                self.python(block, source)
            else:
                try:
                    compile(block.text, f"{source}:{block.line}", "exec")
                except SyntaxError as e:
                    self.fail(block, "python (compiled)", str(e))
        elif block.kind == "toml":
            self.toml(block)
        elif block.kind == "csv":
            rows = list(csv.reader(io.StringIO(block.text)))
            if len({len(r) for r in rows}) != 1:
                self.fail(block, "csv", f"rows of different lengths: {rows}")
        elif block.kind == "json":
            try:
                json.loads(block.text)
            except ValueError as e:
                self.fail(block, "json", str(e))

    def command(self, block: Block, argv: list, exits: frozenset = frozenset({0, 1})) -> None:
        shown = "batchgen " + " ".join(argv)
        if any(_PLACEHOLDER.search(arg) for arg in argv[1:]):
            problem = check_synopsis(argv)
            if problem:
                self.fail(block, shown, problem)
            return
        reason = next((why for why, applies in PARSE_ONLY if applies(argv)), None)
        if reason is not None:
            problem = parse(argv)
            if problem:
                self.fail(block, f"{shown} (parsed only: {reason})", problem)
            return
        proc = subprocess.run([sys.executable, "-m", "batchgen", *argv], cwd=self.where, env=self.env,
                              capture_output=True, text=True, timeout=600)
        self.ran.append(shown)
        if proc.returncode not in exits or "Traceback" in proc.stderr:
            self.fail(block, shown, f"exit {proc.returncode}: {proc.stderr or proc.stdout}")

    def python(self, block: Block, source: str) -> None:
        script = self.where / f"snippet_{block.line}.py"
        script.write_text(block.text)
        runner = self.where / "_consume.py"
        runner.write_text(_CONSUME)
        proc = subprocess.run([sys.executable, str(runner), str(script)], cwd=self.where, env=self.env,
                              capture_output=True, text=True, timeout=600)
        self.ran.append(f"python block of {source}:{block.line}")
        if proc.returncode != 0:
            self.fail(block, "python", proc.stderr)

    def toml(self, block: Block) -> None:
        try:
            doc = tomllib.loads(block.text)
        except tomllib.TOMLDecodeError as e:
            return self.fail(block, "toml", str(e))
        if "input" in doc:      # a job file: written beside the sample jobs, then planned
            job = self.where / "jobs" / f"readme_{block.line}.toml"
            job.write_text(block.text)
            self.command(block, ["plan", str(job.relative_to(self.where))])


def scratch(tmp_path: Path) -> Path:
    for folder in ("jobs", "sample_data"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def run_document(runner: Runner, path: Path) -> None:
    for block in blocks(path.read_text(encoding="utf-8")):
        runner.block(block, path.name)


# ---- the extractor -----------------------------------------------------------------------

def test_the_extractor_finds_fenced_and_indented_blocks_commands_and_synopses():
    text = textwrap.dedent("""\
        Intro paragraph.

            batchgen run SOURCE [OPTIONS]

        Run it:

            python3 -m venv .venv && .venv/bin/batchgen plan a.csv --rpm 5   # a comment
            export OPENAI_API_KEY=...
            X=1 batchgen run a.csv --simulate \\
                --out runs/x | jq .ok

        ```python
        import batchgen
        ```

          ~~~toml
          input = "a.csv"
          ~~~
        - a list item

            from openai import OpenAI
            c = OpenAI(base_url="http://127.0.0.1:P/v1")

            curl http://127.0.0.1:P/v1/images/edits \\
                -d '{"model": "gpt-image-2"}'
        """)
    found = blocks(text)
    assert [(b.kind, b.fenced) for b in found] == [("shell", False), ("shell", False), ("python", True),
                                                  ("toml", True), ("python", False), ("shell", False)]
    assert found[4].text.splitlines()[-1].startswith("c = OpenAI(") and found[5].text.startswith("curl ")
    assert commands(found[1].text) == [(["plan", "a.csv", "--rpm", "5"], {0, 1}),
                                       (["run", "a.csv", "--simulate", "--out", "runs/x"], {0, 1})]
    assert any(_PLACEHOLDER.search(a) for a in commands(found[0].text)[0][0][1:])
    assert commands("batchgen run a.csv --no-wait    # submits and exits 3") == [
        (["run", "a.csv", "--no-wait"], {0, 1, 3})]
    assert found[3].text == 'input = "a.csv"'


def test_parsing_catches_what_the_cli_would_refuse():
    assert parse(["run", "a.csv", "--provider", "openai", "--mode", "batch"]) is None
    assert "no such option" in parse(["run", "a.csv", "--no-such-option"]).lower()
    assert "not one of" in parse(["run", "a.csv", "--mode", "fast"]) or "invalid" in parse(
        ["run", "a.csv", "--mode", "fast"]).lower()
    assert check_synopsis(["report", "OUT", "[--cols", "AXIS]"]) is None
    assert check_synopsis(["report", "OUT", "[--colour", "X]"]) == "report has no option --colour"


# ---- the documents -------------------------------------------------------------------------

def test_every_command_and_snippet_of_the_readme_runs(tmp_path):
    runner = Runner(scratch(tmp_path))
    run_document(runner, REPO / "README.md")
    assert not runner.failures, "README blocks that fail:\n" + "\n".join(runner.failures)
    assert any(c.startswith("batchgen run") for c in runner.ran)     # it did run things
    assert any(c.startswith("python block") for c in runner.ran)


@pytest.mark.parametrize("format_", ["webdataset", "parquet"])
def test_the_dataset_cards_snippets_load_the_export(tmp_path, format_):
    where = scratch(tmp_path)
    runner = Runner(where)
    out, dest = "runs/simulated/card", f"exports/card-{format_}"
    runner.command(Block("shell", "", 0, False), ["run", "jobs/otter_sweep.toml", "--simulate", "--out", out,
                                                  "--no-progress"])
    runner.command(Block("shell", "", 0, False), ["export", out, "--format", format_, "--to", dest,
                                                  "--shard-size", "20"])
    assert not runner.failures, "\n".join(runner.failures)
    card = where / dest / "README.md"
    run_document(runner, card)
    assert not runner.failures, f"dataset card blocks that fail:\n{card.read_text()}\n" + "\n".join(runner.failures)
    assert any(c.startswith("python block") for c in runner.ran)
