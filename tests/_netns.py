"""Two emulated hosts for tests: network namespaces joined by a veth pair (root and iproute2 needed).

Only the two private addresses given, which exist inside these namespaces alone, are ever used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Iterator

import pytest


def ip(*args: str) -> subprocess.CompletedProcess:
    """Run ``ip ARGS`` (30 s bound)."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def two_namespaces(ns_prefix: str, veth_prefix: str, addr_a: str, addr_b: str) -> Iterator[dict]:
    """Yield {"A": ns, "B": ns} with ``addr_a``/``addr_b`` (/24) on veth ``<veth_prefix>…``; skip when impossible.

    Always removes what it made. Use as the body of a pytest fixture (``yield from``).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"{ns_prefix}{tag}a", f"{ns_prefix}{tag}b"
    veth_a, veth_b = f"{veth_prefix}{tag}a", f"{veth_prefix}{tag}b"

    def cleanup() -> None:
        for ns in (ns_a, ns_b):
            ip("netns", "del", ns)  # takes its end of the veth pair with it
        ip("link", "del", veth_a)  # in case it never left the root namespace

    steps = [
        ("netns", "add", ns_a), ("netns", "add", ns_b),
        ("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
        ("link", "set", veth_a, "netns", ns_a), ("link", "set", veth_b, "netns", ns_b),
        ("-n", ns_a, "addr", "add", f"{addr_a}/24", "dev", veth_a),
        ("-n", ns_b, "addr", "add", f"{addr_b}/24", "dev", veth_b),
        ("-n", ns_a, "link", "set", veth_a, "up"), ("-n", ns_b, "link", "set", veth_b, "up"),
        ("-n", ns_a, "link", "set", "lo", "up"), ("-n", ns_b, "link", "set", "lo", "up"),
    ]
    for step in steps:
        r = ip(*step)
        if r.returncode != 0:
            cleanup()
            pytest.skip(f"cannot set up network namespaces: `ip {' '.join(step)}` failed: {r.stderr.strip()}")
    try:
        yield {"A": ns_a, "B": ns_b}
    finally:
        cleanup()
