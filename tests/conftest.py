"""Shared fixtures: pyxccl from this checkout's src/, and session-wide pools of rank processes.

``pool(n)`` returns a :class:`harness.Pool` of ``n`` ranks (shm between them);
``pool(n, "socket")`` one whose workers run with PYXCCL_TRANSPORT=socket;
``pool(4, "hosts:AABB")`` one whose ranks are spread over emulated hosts (PYXCCL_HOSTID),
shm inside a host and sockets across. Pools start on
first use, are reused by every later test, restarted after a hang or a crash, and torn
down (communicators destroyed, processes joined) at the end of the session.
"""

from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

harness.ensure_src_on_path()


@pytest.fixture(scope="session")
def pool_manager():
    manager = harness.PoolManager()
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def pool(pool_manager):
    """``pool(nranks, transport="auto")`` -> a running Pool (started on first use)."""
    return pool_manager.get


@pytest.fixture(scope="module")
def env_pools():
    """``env_pools(nranks, **env)`` -> a running Pool whose workers run with the extra environment
    ``env`` (started on first use, one per (nranks, env), closed at the end of the module)."""
    made: dict[tuple, harness.Pool] = {}

    def get(nranks: int, **env: str) -> harness.Pool:
        key = (nranks, tuple(sorted(env.items())))
        p = made.get(key)
        if p is None or not p.healthy:
            p = made[key] = harness.Pool(nranks, "auto", env=dict(env)).start()
        return p

    yield get
    for p in made.values():
        p.close()
