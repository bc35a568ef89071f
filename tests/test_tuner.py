"""The tuner: PYXCCL_ALGO parsing, selection precedence, the rule table, and `pyxccl plans`."""

from __future__ import annotations

import pytest

from pyxccl import algorithms, tuner
from pyxccl.cli import main as cli
from pyxccl.errors import ConfigError, InvalidArgument
from pyxccl.ir.program import COLLECTIVES
from pyxccl.tuner.rules import RULES, parse_size, predicate
from pyxccl.tuner.spec import Item, parse

TWO = ((0, 1), (2, 3))
KiB, MiB = 1 << 10, 1 << 20


def test_parse_nccl_style():
    assert parse("allreduce:tree;allgather:ring") == {"allreduce": (Item("tree"),), "allgather": (Item("ring"),)}
    assert parse("allreduce=recursive_doubling:0-8192,ring:8193-max") == {
        "allreduce": (Item("recursive_doubling", 0, 8192), Item("ring", 8193, None))}
    assert parse("all_reduce:ring:8K-1M") == {"allreduce": (Item("ring", 8192, MiB),)}
    assert parse("allreduce:^allpairs") == {"allreduce": (Item("allpairs", exclude=True),)}
    assert parse(" ; ") == {} and parse("") == {}


def test_parse_bare_names_apply_to_every_collective_that_has_them():
    p = parse("ring")
    assert set(p) == {"allreduce", "allgather", "reducescatter"}
    assert set(parse("hierarchical")) == {"allreduce", "allgather", "reducescatter"}


@pytest.mark.parametrize("spec,match", [
    ("allreduce:nope", "unknown allreduce algorithm 'nope'"),
    ("allredux:ring", "unknown collective 'allredux'"),
    ("nope", "no collective has an algorithm 'nope'"),
    ("allreduce=ring:5", "must be lo-hi"),
    ("allreduce=ring:9-3", "empty size range"),
    ("allreduce=ring:1x-3", "expected a number of bytes"),
    ("allgather:allpairs", "unknown allgather algorithm 'allpairs'"),
])
def test_parse_errors_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse(spec)
    with pytest.raises(ConfigError):
        tuner.select("allreduce", 4, 8, None, spec)


def test_parse_is_cached():
    from pyxccl.tuner import spec as spec_mod
    spec_mod._parse.cache_clear()
    parse("allreduce:tree")
    parse("allreduce:tree")
    assert spec_mod._parse.cache_info().hits >= 1


def test_spec_wins_over_rules_and_size_ranges_apply():
    s = "allreduce=recursive_doubling:0-8192,ring:8193-max"
    assert tuner.select("allreduce", 8, 8192, None, s) == "recursive_doubling"
    assert tuner.select("allreduce", 8, 8193, None, s) == "ring"
    assert tuner.select("allreduce", 8, 100, None, "allreduce:tree") == "tree"
    assert tuner.explain("allreduce", 8, 100, None, "allreduce:tree").source == "PYXCCL_ALGO"
    # a spec for another collective leaves this one to the rules
    assert tuner.explain("allgather", 8, 100, None, "allreduce:tree").source == "rule"
    # sizes the spec does not cover fall back to the rules
    assert tuner.explain("allreduce", 8, MiB, None, "allreduce:tree:0-1K").source == "rule"


def test_spec_that_cannot_serve_names_the_variable():
    with pytest.raises(InvalidArgument, match="PYXCCL_ALGO.*hierarchical.*at least 2 hosts"):
        tuner.select("allreduce", 4, MiB, None, "allreduce:hierarchical")
    with pytest.raises(InvalidArgument, match="PYXCCL_ALGO.*two_step.*same number of ranks"):
        tuner.select("alltoall", 5, MiB, ((0, 1, 2), (3, 4)), "alltoall:two_step")
    # a list: the first that can serve
    assert tuner.select("allreduce", 4, MiB, None, "allreduce:hierarchical,tree") == "tree"
    assert tuner.select("allreduce", 4, MiB, TWO, "allreduce:hierarchical,tree") == "hierarchical"


def test_exclusions():
    assert tuner.select("allreduce", 4, 8, None, "") == "recursive_doubling"
    assert tuner.select("allreduce", 4, 8, None, "allreduce:^recursive_doubling") != "recursive_doubling"
    everything = ",".join("^" + n for n in algorithms.names("gather"))
    with pytest.raises(InvalidArgument, match="excludes every gather algorithm"):
        tuner.select("gather", 4, 8, None, f"gather:{everything}")


def test_rules_are_valid_data():
    for r in RULES:
        assert (r.collective, r.algorithm) in algorithms.REGISTRY, r
        predicate(r.ranks)
        assert r.lo >= 0 and (r.hi is None or r.hi >= r.lo)
    with pytest.raises(ConfigError):
        predicate("n~3")
    assert predicate("pow2")(8, None) and not predicate("pow2")(6, None)
    assert predicate("hosts>=2 & uniform")(4, TWO) and not predicate("hosts>=2")(4, None)
    assert not predicate("uniform")(5, ((0, 1, 2), (3, 4)))
    assert predicate("n<=4")(4, None) and not predicate("n>4")(4, None)
    assert parse_size("64K") == 65536 and parse_size("1MiB") == MiB and parse_size("max") is None


SHAPES = [(1, None), (2, None), (3, None), (4, None), (8, None), (33, None), (2, ((0,), (1,))), (4, TWO),
          (4, ((0, 2), (1, 3))), (5, ((0, 1, 2), (3, 4))), (8, ((0, 1, 2, 3), (4, 5, 6, 7))),
          (16, tuple(tuple(range(h * 4, h * 4 + 4)) for h in range(4)))]


@pytest.mark.parametrize("nranks,hosts", SHAPES)
def test_every_call_gets_an_algorithm_that_can_serve_it(nranks, hosts):
    for coll in COLLECTIVES:
        for nbytes in (0, 8, 4 * KiB, 4 * KiB + 1, 64 * KiB, MiB, 64 * MiB):
            name = tuner.select(coll, nranks, nbytes, hosts, "")
            algo = algorithms.get(coll, name)
            assert algo.supports(nranks, hosts), (coll, nranks, hosts, nbytes, name)
            algorithms.program(coll, name, nranks, 1, 0, hosts)  # builds


def test_default_selection_never_picks_a_host_aware_algorithm_on_one_host():
    for coll in COLLECTIVES:
        for nbytes in (8, MiB, 64 * MiB):
            for n in (2, 4, 8):
                assert not algorithms.get(coll, tuner.select(coll, n, nbytes, None, "")).host_aware


def test_multi_host_prefers_the_hierarchical_algorithms_for_large_messages():
    assert tuner.select("allreduce", 4, 64 * MiB, TWO, "") in ("hierarchical", "accl", "mics_2hop")
    assert tuner.select("allgather", 4, 64 * MiB, TWO, "") == "hierarchical"
    assert tuner.select("allreduce", 4, 64 * MiB, None, "") == "ring"


def test_plans_cli(capsys):
    assert cli.main(["plans"]) == 0
    out = capsys.readouterr().out
    assert "allreduce" in out and "hierarchical" in out and "Selection rules" in out
    assert cli.main(["plans", "-n", "8", "--hosts", "2", "--no-registry", "-c", "allreduce", "-b", "8", "-e", "64M"]) == 0
    out = capsys.readouterr().out
    assert "8 ranks on 2 hosts [4, 4]" in out and "64M" in out and "hierarchical" in out
    assert cli.main(["plans", "-n", "4", "--hosts", "0,2:1,3", "--no-registry", "--algo", "allreduce:tree"]) == 0
    out = capsys.readouterr().out
    assert "tree*" in out
    assert cli.main(["plans", "-n", "4", "--no-registry", "--algo", "allreduce:bogus"]) == 2
    assert "ConfigError" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([])


def test_console_script_declared():
    import pathlib
    text = (pathlib.Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert 'pyxccl = "pyxccl.cli.main:main"' in text
