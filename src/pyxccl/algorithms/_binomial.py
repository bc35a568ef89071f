"""The binomial tree shared by broadcast_binomial and reduce_binomial (private)."""

from __future__ import annotations


def parent(v: int) -> int:
    """Parent of relative rank v > 0: v without its highest set bit."""
    return v - (1 << (v.bit_length() - 1))


def children(v: int, n: int) -> list[int]:
    """Children of relative rank v, farthest first: v + 2^j for 2^j > v (all j for v = 0), below n."""
    out = []
    d = 1 << max(v.bit_length(), 0)
    while v + d < n:
        out.append(v + d)
        d <<= 1
    return out[::-1]
