"""Every command line in the docs parses with its script's own parser: the ```bash blocks of the root *.md files
and docs/*.md, each ``python run_*.py``, ``python extract_features.py``, ``python scripts/*.py`` or
``python -m patches...`` command (continuation lines joined; environment assignments, ``torchrun``/``srun``
wrappers and ``&&``-chained commands around it dropped). The script runs as ``__main__`` until its parser has
parsed the line; then it stops, before any work."""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md"))
SCRIPT = re.compile(r"^(?:\./)?(run_\w+\.py|extract_features\.py|scripts/\w+\.py)$")


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of each ```bash block."""
    return [(text[:m.start(1)].count("\n") + 1, m.group(1)) for m in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M)]


def logical_lines(body: str, first: int) -> list[tuple[int, str]]:
    """Lines with their continuations (a trailing backslash) joined, comments dropped."""
    out, pending, start = [], "", first
    for number, line in enumerate(body.splitlines(), start=first):
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    return out


def script_commands(line: str) -> list[tuple[str, list[str]]]:
    """(script or ``-m module``, its flags) for each python command of a shell line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens, commands = list(lexer), []
    parts, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";", "|", "&"):
            parts.append(current)
            current = []
        else:
            current.append(token)
    parts.append(current)
    for part in parts:
        for i, token in enumerate(part):
            if SCRIPT.match(token):
                commands.append((token.removeprefix("./"), usage_flags(part[i + 1:])))
                break
            if token == "-m" and i + 1 < len(part) and part[i + 1].startswith("patches."):
                commands.append(("-m " + part[i + 1], usage_flags(part[i + 2:])))
                break
    return commands


def usage_flags(tokens: list[str]) -> list[str]:
    """A synopsis read as a command: ``...`` (flags left out) dropped, ``[--opt X]`` taken as given."""
    flags = [t.replace("[", "").replace("]", "") for t in tokens]
    return [f for f in flags if f and f != "..."]


def collect() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in DOCS:
        for first, body in bash_blocks(doc.read_text()):
            for number, line in logical_lines(body, first):
                for script, flags in script_commands(line):
                    found.append((f"{doc.relative_to(ROOT)}:{number}", script, flags))
    return found


COMMANDS = collect()


class Parsed(Exception):
    """Raised once the script's parser has parsed the command line: nothing after it runs."""


def parse_with_the_scripts_parser(script: str, flags: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    parse_args = argparse.ArgumentParser.parse_args
    parsing = []

    def parse_then_stop(self, args=None, namespace=None):
        parsing.append(True)
        namespace = parse_args(self, args, namespace)
        raise Parsed(namespace)

    def parse_known_args(self, args=None, namespace=None):
        assert parsing, f"{script} parses with parse_known_args: this test cannot stop it before it runs"
        return known_args(self, args, namespace)

    known_args = argparse.ArgumentParser.parse_known_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    monkeypatch.chdir(ROOT)
    if script.startswith("-m "):
        monkeypatch.setattr(sys, "argv", [script[3:], *flags])
        run = lambda: runpy.run_module(script[3:], run_name="__main__", alter_sys=False)  # noqa: E731
    else:
        monkeypatch.setattr(sys, "argv", [str(ROOT / script), *flags])
        run = lambda: runpy.run_path(str(ROOT / script), run_name="__main__")  # noqa: E731
    with pytest.raises(Parsed) as parsed:
        run()
    return parsed.value.args[0]


def test_the_docs_hold_the_command_lines_this_test_reads():
    scripts = {script for _, script, _ in COMMANDS}
    assert len(COMMANDS) >= 30, COMMANDS
    assert {"run_mae_pretraining.py", "run_class_finetuning.py", "run_demo.py", "run_inference.py",
            "extract_features.py", "scripts/patch_sweep.py", "scripts/benchmark.py"} <= scripts, scripts


def test_the_extraction_joins_continuations_and_strips_wrappers():
    body = ("DATASET=k400 torchrun --nproc_per_node 8 run_mae_pretraining.py --model m \\\n"
            "    --epochs 3   # a comment\npip install -e . && python run_demo.py --pretrain_epochs 2\n"
            "python run_inference.py VIDEO [VIDEO ...] --checkpoint CKPT [--json]\n")
    lines = logical_lines(body, 1)
    assert [n for n, _ in lines] == [1, 3, 4]
    assert [c for _, line in lines for c in script_commands(line)] == [
        ("run_mae_pretraining.py", ["--model", "m", "--epochs", "3"]), ("run_demo.py", ["--pretrain_epochs", "2"]),
        ("run_inference.py", ["VIDEO", "VIDEO", "--checkpoint", "CKPT", "--json"])]


@pytest.mark.parametrize("where, script, flags", COMMANDS, ids=[f"{w} {s}" for w, s, _ in COMMANDS])
def test_a_doc_command_parses_with_its_scripts_parser(where, script, flags, monkeypatch, capsys):
    try:
        parse_with_the_scripts_parser(script, flags, monkeypatch)
    except SystemExit as e:
        pytest.fail(f"{where}: {script} {' '.join(flags)} exited {e.code}\n{capsys.readouterr().err}")


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of ``doc``."""
    headings = re.findall(r"^#+ (.*)$", re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken
