"""The user docs stay true to the code: the README's table of variables is the one config.py
generates, and no doc points outside the repository or to a file that is not there."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from pyxccl import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
REGENERATE = "python -m pyxccl.config --write README.md"
#: the docs a user reads (the development log under docs/history/ is kept as it was written)
USER_DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
ALL_DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _table_in(text: str) -> str:
    """What lies between the README's config-table lines."""
    assert text.count(config.TABLE_BEGIN) == 1 and text.count(config.TABLE_END) == 1, (
        f"the README needs one {config.TABLE_BEGIN} line and one {config.TABLE_END} line around the "
        f"table of variables; then run {REGENERATE}")
    return text.split(config.TABLE_BEGIN, 1)[1].split(config.TABLE_END, 1)[0].strip("\n")


def _first_difference(have: str, want: str) -> str:
    for i, (a, b) in enumerate(zip(have.splitlines(), want.splitlines())):
        if a != b:
            return f"line {i + 1} of the table:\n  README:    {a}\n  config.py: {b}"
    return f"the README's table has {len(have.splitlines())} lines, config.py's {len(want.splitlines())}"


def _outside_code(text: str) -> str:
    """``text`` without its fenced code blocks (commands may name any address)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


# ---------------------------------------------------------------- the table of variables

def test_readme_table_of_variables_is_the_generated_one():
    have, want = _table_in(_read(README)), config.markdown_table().strip("\n")
    assert have == want, (f"README.md's table of PYXCCL_* variables differs from src/pyxccl/config.py; "
                          f"regenerate it with `{REGENERATE}`. First difference: {_first_difference(have, want)}")


def test_the_table_has_one_row_per_variable_with_its_default_and_meaning():
    rows = config.markdown_table().splitlines()[2:]
    assert len(rows) == len(config.RULES)
    cells = {row.split(" | ")[0].strip("| `"): row.split(" | ") for row in rows}
    assert set(cells) == config.KNOWN
    for var, default in [("PYXCCL_SLOT_BYTES", "1M"), ("PYXCCL_TIMEOUT", "300"), ("PYXCCL_CHECK", "0"),
                         ("PYXCCL_CMA_MIN_BYTES", "512K"), ("PYXCCL_TRACE_SIZE", "1000"),
                         ("PYXCCL_COMM_ID", "unset"), ("PYXCCL_DEBUG", "WARN")]:
        assert cells[var][1] == default, (var, cells[var])
    for row in rows:
        assert row.count(" | ") == 3 and row.endswith(" |"), row  # no stray pipe splits a cell
        assert all(cell.strip("| ") for cell in row.split(" | ")), f"an empty cell (a field without a docstring?): {row}"
    assert "`pyxccl.rpc`" in cells["PYXCCL_RPC_MASTER"][3]  # reST roles and ``literals`` become `code`


def test_cells_are_one_line_with_pipes_escaped():
    assert config._cell("a | b\n    ``c`` :mod:`pyxccl.rpc`") == "a \\| b `c` `pyxccl.rpc`"


def test_a_stale_table_is_found_and_the_command_replaces_only_the_table(tmp_path):
    text = _read(README)
    stale = text.replace("| `PYXCCL_TIMEOUT` | 300 |", "| `PYXCCL_TIMEOUT` | 30 |")
    assert stale != text and _table_in(stale) != config.markdown_table().strip("\n")
    path = tmp_path / "README.md"
    path.write_text(stale, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "pyxccl.config", "--write", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    fixed = path.read_text(encoding="utf-8")
    assert _table_in(fixed) == config.markdown_table().strip("\n")
    assert fixed.split(config.TABLE_BEGIN)[0] == text.split(config.TABLE_BEGIN)[0]
    assert fixed.split(config.TABLE_END)[1] == text.split(config.TABLE_END)[1]
    r = subprocess.run([sys.executable, "-m", "pyxccl.config", "--markdown"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout == config.markdown_table(), r.stderr
    with pytest.raises(ValueError, match="config-table"):
        config.with_table("# a file without the markers\n")


# ---------------------------------------------------------------- links and paths

@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_no_doc_points_outside_the_repository(path):
    text = _read(path)
    prose = _outside_code(text)
    bad = re.findall(r"\.\./shared|\bshared/notes\b|\bDESIGN\.md\b", text)
    bad += re.findall(r"\bthe issues\b|\bissues? #?\d+\b|`issues (?:show|list)", prose, flags=re.I)
    bad += re.findall(r"\]\((?:https?:|/|\.\./)[^)]*\)|<https?://[^>]*>|(?<![`\w])https?://\S+", prose)
    assert not bad, f"{os.path.relpath(path, ROOT)} points outside the repository: {bad}"
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", prose):  # relative Markdown links lead to a file here
        assert os.path.exists(os.path.join(os.path.dirname(path), target)), (path, target)


_PATH = re.compile(r"(?<![\w/.-])((?:src/pyxccl|tests|benchmarks|examples|docs)/[\w./*<>-]*[\w*>])")


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_files_the_docs_name_exist(path):
    missing = sorted({p for p in _PATH.findall(_read(path))
                      if "<" not in p and not glob.glob(os.path.join(ROOT, p))})  # a pattern: one match
    assert not missing, f"{os.path.relpath(path, ROOT)} names files that are not in the repository: {missing}"
