"""The per-call choice between slots and single copy (pyxccl.runtime.host.path_choice), on a simulated machine."""

from __future__ import annotations

from pyxccl.runtime.host.path_choice import (DIRECT, HISTORY, MAX_INTERVAL, MIN_INTERVAL, MIXED, PUT, SLOTS, TRY_BUDGET, TRY_CALLS,
                          PathChooser)

NBYTES = 16 << 20
T = TRY_CALLS


def _run(chooser: PathChooser, key, cost: dict[int, float], calls: int) -> list[int]:
    """``calls`` calls whose time is ``cost[path]`` seconds; the paths taken (among the paths ``cost`` names)."""
    taken = []
    candidates = tuple(p for p in (DIRECT, SLOTS, MIXED, PUT) if p in cost)
    for _ in range(calls):
        path = chooser.choose(key, candidates)
        chooser.record(key, path, cost[path], NBYTES)
        taken.append(path)
    return taken


def test_tries_both_then_keeps_the_faster_and_backs_off():
    c = PathChooser()
    key = c.key(object(), NBYTES)
    taken = _run(c, key, {SLOTS: 1.0, DIRECT: 1.6}, 2 * T + 1000)
    assert taken[:2 * T] == [DIRECT] * T + [SLOTS] * T  # each measured over TRY_CALLS calls
    rest = taken[2 * T:]
    tries = [i for i, p in enumerate(rest) if p == DIRECT and (i == 0 or rest[i - 1] != DIRECT)]  # their starts
    assert rest.count(SLOTS) > 980 and tries  # mostly the faster path, the other tried now and then
    assert rest.count(DIRECT) == T * len(tries)  # a try is TRY_CALLS calls in a row
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    # each losing try doubles the interval (counted from the try's last call)
    assert gaps == sorted(gaps) and gaps[-1] == MAX_INTERVAL + T - 1
    # the first try is as far away as single copy is slower: 60 % behind, tried after
    # T * 0.6 / TRY_BUDGET calls (a try costs TRY_CALLS calls of the slower path)
    assert tries[0] == round(T * 0.6 / TRY_BUDGET) - 1 and gaps[0] == 2 * round(T * 0.6 / TRY_BUDGET) + T - 1


def test_follows_the_machine_when_it_changes():
    c = PathChooser()
    key = c.key(object(), NBYTES)
    _run(c, key, {SLOTS: 1.0, DIRECT: 1.6}, 300)  # slots win (vCPUs sharing a cache)
    assert c.best(key) == SLOTS
    after = _run(c, key, {SLOTS: 5.0, DIRECT: 1.6}, 50)  # the slots get 5x slower
    # the fastest of the last HISTORY calls counts: after that many slow calls it switches
    assert after[:HISTORY] == [SLOTS] * HISTORY and after.count(DIRECT) >= 50 - HISTORY - 1
    assert c.best(key) == DIRECT
    # the slots recover: the next try of them (at most MAX_INTERVAL calls away) wins them back
    back = _run(c, key, {SLOTS: 1.0, DIRECT: 1.6}, MAX_INTERVAL + 20)
    first = back.index(SLOTS)
    assert first <= MAX_INTERVAL and c.best(key) == SLOTS
    # from then on single copy is only tried, at growing intervals (8, 16, 32, ...)
    assert back[first + 1:first + MIN_INTERVAL] == [SLOTS] * (MIN_INTERVAL - 1)
    assert back[first:].count(DIRECT) <= 4


def test_keeps_the_path_in_use_unless_the_other_is_clearly_faster():
    c = PathChooser()
    key = c.key(object(), NBYTES)
    _run(c, key, {SLOTS: 1.0, DIRECT: 1.5}, 30)
    assert c.best(key) == SLOTS
    taken = _run(c, key, {SLOTS: 1.02, DIRECT: 1.0}, 100)  # 2 % apart: no reason to move
    assert c.best(key) == SLOTS and taken.count(SLOTS) > 90
    taken = _run(c, key, {SLOTS: 1.2, DIRECT: 1.0}, 100)
    assert c.best(key) == DIRECT and taken[-50:].count(DIRECT) > 45
    taken = _run(c, key, {SLOTS: 0.99, DIRECT: 1.0}, 100)  # and back: 1 % is not enough either
    assert c.best(key) == DIRECT and taken.count(DIRECT) > 90


def test_a_delayed_call_does_not_flip_the_choice():
    c = PathChooser()
    key = c.key(object(), NBYTES)
    _run(c, key, {SLOTS: 1.0, DIRECT: 1.6}, 30)
    c.record(key, c.choose(key), 9.0, NBYTES)  # one call delayed by another process
    assert c.best(key) == SLOTS


def test_keys_are_per_program_and_size_class():
    c = PathChooser()
    p, q = object(), object()
    assert c.key(p, 1 << 20) == c.key(p, (1 << 21) - 1) != c.key(p, 1 << 21)
    assert c.key(p, 1 << 20) != c.key(q, 1 << 20)
    a, b = c.key(p, 1 << 20), c.key(q, 1 << 20)
    _run(c, a, {SLOTS: 1.0, DIRECT: 2.0}, 20)
    _run(c, b, {SLOTS: 2.0, DIRECT: 1.0}, 20)
    assert (c.best(a), c.best(b)) == (SLOTS, DIRECT)
    assert c.best(c.key(p, 1 << 25)) is None


def test_three_paths_each_once_then_the_fastest_and_tries_of_both_others():
    c = PathChooser()
    key = c.key(object(), NBYTES)
    taken = _run(c, key, {SLOTS: 1.0, DIRECT: 1.6, MIXED: 0.9}, 3 * T + 200)
    assert taken[:3 * T] == [DIRECT] * T + [SLOTS] * T + [MIXED] * T and c.best(key) == MIXED
    rest = taken[3 * T:]
    tries = [p for p in rest if p != MIXED]
    assert rest.count(MIXED) > 180 and SLOTS in tries and DIRECT in tries  # both others are tried
    # each on its own schedule: single copy, 78 % behind, less often than the slots, 11 % behind
    assert 0 < tries.count(DIRECT) < tries.count(SLOTS)
    # the mix gets slow: the next best measured path takes over within HISTORY calls
    after = _run(c, key, {SLOTS: 1.0, DIRECT: 1.6, MIXED: 3.0}, 20)
    assert after[HISTORY:].count(SLOTS) >= 20 - HISTORY - 1 and c.best(key) == SLOTS


def test_four_paths_the_put_wins_and_the_others_are_tried_in_turn():
    c = PathChooser()
    key = c.key(object(), NBYTES)
    taken = _run(c, key, {SLOTS: 1.0, DIRECT: 1.6, MIXED: 1.2, PUT: 0.8}, 4 * T + 300)
    assert taken[:4 * T] == [DIRECT] * T + [SLOTS] * T + [MIXED] * T + [PUT] * T and c.best(key) == PUT
    tries = [p for p in taken[4 * T:] if p != PUT]
    assert {SLOTS, DIRECT, MIXED} <= set(tries[:3 * T]) and len(tries) < 30 * T


def test_a_path_slow_on_its_first_call_after_another_still_wins():
    """The first call of a path after calls of another runs cold (here the slots at 2x their
    own speed, single copy at 1.1x): a try of one call would never see that the slots are
    faster; the try's last call does."""
    c = PathChooser()
    key = c.key(object(), NBYTES)
    steady = {SLOTS: 1.0, DIRECT: 1.6}
    cold = {SLOTS: 2.0, DIRECT: 1.1}
    last: list[int | None] = [None]
    taken = []
    for _ in range(40):
        path = c.choose(key)
        c.record(key, path, steady[path] * (cold[path] if path != last[0] else 1.0), NBYTES)
        last[0] = path
        taken.append(path)
    assert c.best(key) == SLOTS and taken[-30:].count(SLOTS) == 30


def test_candidates_are_the_paths_that_differ():
    class Run:
        mixed_differs = put_differs = False
    run = Run()
    assert PathChooser.candidates(run) == (DIRECT, SLOTS)
    run.put_differs = True
    assert PathChooser.candidates(run) == (DIRECT, SLOTS, PUT)
    run.mixed_differs = True
    assert PathChooser.candidates(run) == (DIRECT, SLOTS, MIXED, PUT)


def test_a_fixed_setting_always_takes_its_path():
    class Run:
        program, mixed_differs, put_differs, path = object(), False, False, DIRECT
    c = PathChooser("mixed")
    run = Run()
    ran = []
    c.drive(run, NBYTES, lambda: ran.append(run.path))
    assert ran == [MIXED]
    on = PathChooser("on")  # PYXCCL_CMA=1: single copy wherever a step may
    run.path = SLOTS
    on.drive(run, NBYTES, lambda: ran.append(run.path))
    assert ran == [MIXED, DIRECT]
    PathChooser("put").drive(run, NBYTES, lambda: ran.append(run.path))
    assert ran == [MIXED, DIRECT, PUT]
