"""The rules of the house, checked on the source tree (docs/architecture.md).

Layers stay sealed: nothing outside ``transport/`` knows where shared memory lives, the
communicator's private state stays in ``comm/``, the engine files import each other one way,
every transport has the same file set, files stay small, and the README's layout names what
the tree holds.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PKG = os.path.join(ROOT, "src", "pyxccl")


def _sources() -> list[str]:
    out = []
    for d, _, files in os.walk(PKG):
        out += [os.path.join(d, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _rel(path: str) -> str:
    return os.path.relpath(path, PKG).replace(os.sep, "/")


def _runtime_imports(path: str) -> set[str]:
    """Modules ``path`` imports when it runs (absolute names; imports under TYPE_CHECKING left out)."""
    tree = ast.parse(open(path).read())
    mod = "pyxccl." + _rel(path)[:-3].replace("/", ".")
    pkg = mod if mod.endswith("__init__") else mod.rsplit(".", 1)[0]
    pkg = pkg.removesuffix(".__init__")
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = pkg.split(".")
                    parts = parts[:len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                out.add(base)
                out.update(f"{base}.{a.name}" for a in child.names)
            elif isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            visit(child)
    visit(tree)
    return out


def test_every_source_file_is_under_600_lines():
    long = {_rel(p): n for p in _sources() if (n := sum(1 for _ in open(p))) >= 600}
    assert not long, f"files of 600 lines or more hold two things: split them: {long}"


def test_transports_have_the_same_file_set():
    tdir = os.path.join(PKG, "transport")
    names = [d for d in sorted(os.listdir(tdir)) if os.path.isdir(os.path.join(tdir, d)) and not d.startswith("_")]
    assert {"shm", "socket", "local"} <= set(names)
    for name in names:
        files = set(os.listdir(os.path.join(tdir, name)))
        missing = {"__init__.py", "transport.py", "connectors.py"} - files
        assert not missing, f"transport/{name} lacks {sorted(missing)}"


def test_nothing_outside_transport_names_shared_memory_files():
    hits = [_rel(p) for p in _sources() if not _rel(p).startswith("transport/") and
            re.search(r"[\"']/dev/shm", open(p).read())]
    assert not hits, f"only transport/ knows where shared memory lives: {hits}"


def test_no_module_outside_transport_imports_a_transports_internals():
    bad = {}
    for p in _sources():
        if _rel(p).startswith("transport/"):
            continue
        inner = sorted(m for m in _runtime_imports(p)
                       if re.match(r"pyxccl\.transport\.(shm|socket|local|slots)\b", m))
        if inner:
            bad[_rel(p)] = inner
    assert not bad, f"use pyxccl.transport's public names instead: {bad}"


def test_the_engine_files_import_each_other_one_way():
    """plan <- single_copy <- executor: the plan knows no executor, the strategy no runner class."""
    host = os.path.join(PKG, "runtime", "host")
    plan = _runtime_imports(os.path.join(PKG, "runtime", "plan.py"))
    single = _runtime_imports(os.path.join(host, "single_copy.py"))
    assert not any(m.startswith("pyxccl.runtime.host") for m in plan)
    assert not any(m.startswith("pyxccl.runtime.host.executor") for m in single)


@pytest.mark.parametrize("path", ["runtime/plan.py", "runtime/host/executor.py"])
def test_the_plan_and_the_hot_loop_neither_allocate_nor_take_raw_addresses(path):
    text = open(os.path.join(PKG, path)).read()
    imports = _runtime_imports(os.path.join(PKG, path))
    assert "numpy" not in imports and "ctypes" not in imports
    assert not re.search(r"\bnp\.|ctypes|__array_interface__", text)


def test_names_say_what_they_are():
    base = [os.path.basename(p) for p in _sources()]
    assert "calls.py" not in base and "stream_copy.py" not in base
    assert base.count("paths.py") <= 1, "two modules called paths.py"


def test_readme_layout_names_every_top_level_part():
    readme = open(os.path.join(ROOT, "README.md")).read()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.find("\n## ", 5)] if "\n## " in layout[5:] else layout
    parts = [n for n in sorted(os.listdir(PKG)) if not n.startswith("_") and not n.endswith(".egg-info")
             and (n.endswith(".py") or os.path.isdir(os.path.join(PKG, n)))]
    missing = [n for n in parts if (n[:-3] + ".py" if n.endswith(".py") else n + "/") not in layout]
    assert not missing, f"README's layout section does not name {missing}"


def test_no_module_outside_comm_reaches_into_a_communicator():
    hits = []
    for p in _sources():
        if _rel(p).startswith("comm/"):
            continue
        for i, line in enumerate(open(p), 1):
            if re.search(r"\bcomm\._[a-z]|_comm\._[a-z]", line):
                hits.append(f"{_rel(p)}:{i}: {line.strip()}")
    assert not hits, "use comm.context instead:\n" + "\n".join(hits)
