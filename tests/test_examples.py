"""The example scripts and the docs stay true to mlc: runnable shell, real flags, live links.

Fast and offline: no Docker, no torch import beyond the engine's argument parser.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from mlc.cli import app
from mlc.engine.txt2img import build_parser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
SCRIPTS = sorted(EXAMPLES.glob("*.sh"))
OUR_DOCS = [DOCS / "guide.md", DOCS / "parameters.md", DOCS / "troubleshooting.md"]
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "&", ")"}


def engine_flags() -> set[str]:
    """Every option string the engine's parser accepts (e.g. --ddim_steps, --H, --height)."""
    return {s for s in build_parser()._option_string_actions if s.startswith("--")}


def host_flags() -> dict[str, set[str]]:
    """mlc subcommand -> its option strings, from the real typer app."""
    group = typer.main.get_command(app)
    return {
        name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        for name, cmd in group.commands.items()
    }


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [ln for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def mlc_calls(line: str) -> list[tuple[str, list[str]]]:
    """(command, tokens) for each mlc call on LINE: ('txt2img', [...]) for `mlc txt2img` and
    `mlc-txt2img`, ('create', [...]) for `mlc create`, and so on."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # an unfinished quote (a python -c block): plain words will do
        tokens = re.sub(r"[\"']", " ", line).split()
    tokens = [re.sub(r"^.*\$\(", "", t) for t in tokens]  # $(mlc list ...)
    calls = []
    for i, tok in enumerate(tokens):
        rest = tokens[i + 1 :]
        if tok == "mlc-txt2img":
            cmd, args = "txt2img", rest
        elif tok == "mlc" and rest and re.fullmatch(r"[a-z][a-z0-9-]*", rest[0]):
            cmd, args = rest[0], rest[1:]
        else:
            continue
        end = next((j for j, t in enumerate(args) if t in SHELL_STOP), len(args))
        calls.append((cmd, args[:end]))
    return calls


def flags_of(args: list[str]) -> list[str]:
    """The --flags among ARGS (values and '--' separators skipped, '--a=b' cut at '=')."""
    out = []
    for a in args:
        if a == "--":
            break
        if a.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", a) and not a.startswith("$"):
            out.append(a.split("=", 1)[0])
    return out


def check_calls(text: str, where: str) -> list[str]:
    """Problems with the mlc calls in TEXT: unknown commands or flags."""
    problems = []
    engine, host = engine_flags(), host_flags()
    for line in logical_lines(text):
        for cmd, args in mlc_calls(line):
            if cmd not in host:
                problems.append(f"{where}: unknown command `mlc {cmd}` in: {line.strip()}")
                continue
            known = host[cmd] | {"-h", "--help"}
            if cmd == "txt2img":
                known |= engine
            for flag in flags_of(args):
                if flag not in known:
                    problems.append(f"{where}: `mlc {cmd}` has no flag {flag}: {line.strip()}")
    return problems


def test_there_are_example_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"seed-1-setup.sh", "seed-2-single.sh", "seed-3-bulk.sh"} <= names
    assert "explore-samplers.sh" in names
    assert (EXAMPLES / "prompts.txt").is_file()
    assert (EXAMPLES / "README.md").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_executable_bash(script: Path):
    assert os.access(script, os.X_OK), f"{script.name} is not executable (chmod +x)"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    bash = shutil.which("bash")
    assert bash
    res = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_uses_only_real_mlc_flags(script: Path):
    assert check_calls(script.read_text(), script.name) == []


@pytest.mark.parametrize("doc", OUR_DOCS, ids=lambda p: p.name)
def test_doc_commands_use_only_real_mlc_flags(doc: Path):
    """Commands in the guide's code blocks are checked like the scripts."""
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc.read_text(), flags=re.S)
    text = "\n".join(re.sub(r"^\$ ", "", b, flags=re.M) for b in blocks)
    assert check_calls(text, doc.name) == []


def test_the_checker_catches_a_wrong_flag():
    bad = "mlc txt2img sd --prompt x --step 10\nmlc-txt2img --plms \\\n  --sampels 2\nmlc crate x"
    problems = check_calls(bad, "t")
    assert len(problems) == 3, problems
    assert check_calls('mlc txt2img sd --prompt "a, b" --H 128 --x sampler=ddim,plms', "t") == []
    assert check_calls("mlc create sd Pytorch 2.9.1 -w ~/sd -g 0,1 --ulimit none", "t") == []


def test_prompt_file_reads_as_the_engine_reads_it():
    from mlc.engine.txt2img import read_prompt_file

    prompts = read_prompt_file(str(EXAMPLES / "prompts.txt"))
    assert len(prompts) >= 5
    assert all(len(p) < 200 for p in prompts)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # code is not a link
    text = re.sub(r"`[^`\n]*`", "", text)
    return [
        t
        for t in LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")
    ]


@pytest.mark.parametrize(
    "md", sorted(DOCS.glob("*.md")) + [EXAMPLES / "README.md"], ids=lambda p: p.name
)
def test_relative_links_point_at_files(md: Path):
    missing = []
    for target in relative_links(md):
        path = (md.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert missing == [], f"{md.name}: broken links {missing}"


def test_doc_images_are_small():
    images = list((DOCS / "images").glob("*.png"))
    assert sum(p.stat().st_size for p in images) < 1_000_000
