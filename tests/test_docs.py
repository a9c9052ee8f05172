"""The documentation: README.md and the MkDocs site in docs/.

* the site builds with ``mkdocs build --strict`` (every page in the nav, no
  broken link or heading anchor);
* every relative link in README.md and docs/*.md points at an existing file;
* every shell and Python example runs: each ```bash / ```sh / ```python block
  is executed (cwd = the repository root, PYTHONPATH = the repository root)
  unless the line before it is ``<!-- not run: REASON -->`` with a reason;
  every fenced block names its language, so no example escapes by having none;
* docs/configuration.md is exactly what docs/gen_config_reference.py renders
  from courier_spark/core/schema.py;
* docs/architecture.md names every module of courier_spark/ and training/.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
# Fenced blocks that are not examples: diagrams, config and query excerpts.
TEXT_LANGS = {"text", "yaml", "sql", "json", "ini", "toml"}
EXAMPLE_TIMEOUT_S = 120

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`]*)[^`]*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
_MARKER = re.compile(r"<!--\s*not run")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int          # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason, when marked
    closed: bool = True

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        closed = i < len(lines)
        i += 1  # the closing fence
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _NOT_RUN.match(lines[prev]) if prev >= 0 else None
        blocks.append(Block(path, start + 1, m.group("lang").lower(), "\n".join(body) + "\n",
                            marker.group("reason").strip() if marker else None, closed))
    return blocks


ALL_BLOCKS = [b for f in DOC_FILES for b in fenced_blocks(f)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.lang in RUN_LANGS and b.not_run is None]


def _strip_code(text: str) -> str:
    """The text without fenced blocks and inline code spans (their brackets are not links)."""
    text = re.sub(r"^([ \t]*)(`{3,}|~{3,}).*?^\1\2[ \t]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+).+?\1", "", text)


# --------------------------------------------------------------------------- the site
def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_relative_links_resolve():
    broken = []
    for f in DOC_FILES:
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _strip_code(f.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # absolute URL, mailto:, or an anchor in the same page (mkdocs checks those)
            path = target.split("#", 1)[0]
            if not (f.parent / path).exists():
                broken.append(f"{f.relative_to(ROOT)}: {target}")
    assert not broken, "relative links to missing files:\n" + "\n".join(broken)


def test_readme_is_a_short_guide():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines; move reference material into docs/"


# --------------------------------------------------------------------------- the examples
def test_every_example_is_run_or_marked():
    problems = []
    for b in ALL_BLOCKS:
        if not b.closed:
            problems.append(f"{b.id}: the fence is never closed")
        elif not b.lang:
            problems.append(f"{b.id}: fenced block without a language (use ```text for diagrams)")
        elif b.lang not in RUN_LANGS and b.lang not in TEXT_LANGS:
            problems.append(f"{b.id}: unknown language {b.lang!r}")
        elif b.not_run is not None and not b.not_run:
            problems.append(f"{b.id}: <!-- not run: --> without a reason")
    # A marker must sit right above a block; one that precedes nothing is stale.
    marked = {(b.file, b.line) for b in ALL_BLOCKS if b.not_run is not None}
    for f in DOC_FILES:
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if not _MARKER.search(line) or not _NOT_RUN.match(line):
                continue
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if (f, j + 1) not in marked:
                problems.append(f"{f.relative_to(ROOT)}:{i + 1}: a not-run marker that precedes no code block")
    assert not problems, "\n".join(problems)
    # The runner must find what it is meant to run (a parser regression would run nothing).
    assert {b.lang for b in RUN_BLOCKS} >= {"bash", "python"}, [b.id for b in RUN_BLOCKS]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.id)
def test_example_runs(block: Block, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if RUN_LANGS[block.lang] == "python":
        script = tmp_path / "example.py"
        script.write_text(block.code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    assert proc.returncode == 0, (f"example {block.id} exited {proc.returncode}:\n{block.code}\n"
                                  f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


# --------------------------------------------------------------------------- generated and checked pages
def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "docs" / "gen_config_reference.py")
    mod = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no docs/__pycache__
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.dont_write_bytecode = dont_write
    return mod


def test_configuration_reference_is_generated_from_the_schema():
    expected = _generator().render()
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == expected, (
        "docs/configuration.md differs from the schema's rendering: run "
        ".venv/bin/python docs/gen_config_reference.py and commit the result")


def test_configuration_reference_names_every_key():
    from dataclasses import fields

    from courier_spark.core.fields import Section
    from courier_spark.core.schema import CourierConfig
    text = (ROOT / "docs" / "configuration.md").read_text()

    def keys(prefix: str, obj) -> list[str]:
        out = []
        for f in fields(obj):
            v = getattr(obj, f.name)
            key = f"{prefix}.{f.name}" if prefix else f.name
            out += keys(key, v) if isinstance(v, Section) else [key]
        return out

    missing = [k for k in keys("", CourierConfig()) if f"| `{k}` |" not in text]
    assert not missing, missing


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = sorted(p.relative_to(ROOT).as_posix()
                     for pkg in ("courier_spark", "training") for p in (ROOT / pkg).rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not describe: {missing}"
