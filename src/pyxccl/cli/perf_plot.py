"""``pyxccl-perf --plot``: bus bandwidth against size, out of place and in place, one colour per
collective (matplotlib, the ``plot`` extra; checked before the benchmark runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import fail

if TYPE_CHECKING:
    from .perf import Row


def series(rows: list[Row]) -> list[tuple[str, str, list[int], list[float]]]:
    """The lines of the plot: (collective, "out of place" or "in place", sizes, busbw) per collective."""
    out = []
    for coll in dict.fromkeys(r.collective for r in rows):
        mine = [r for r in rows if r.collective == coll]
        out.append((coll, "out of place", [r.size for r in mine], [r.oop_busbw for r in mine]))
        out.append((coll, "in place", [r.size for r in mine], [r.ip_busbw for r in mine]))
    return out


def require_matplotlib() -> None:
    """``--plot``: fail now (one line, exit 2) when matplotlib cannot be imported, before any rank runs."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        fail("pyxccl-perf", f"--plot needs matplotlib ({exc}); install it (pip install 'pyxccl[plot]') "
                            "or leave --plot out")


def plot(rows: list[Row], path: str) -> list[str]:
    """Draw busbw against size into ``path``, out of place (solid) and in place (dashed), one colour per
    collective; returns the lines' labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    labels = []
    for coll, where, xs, ys in series(rows):
        inplace = where == "in place"
        line, = ax.plot(xs, ys, marker="s" if inplace else "o", linestyle="--" if inplace else "-",
                        color=colours.get(coll), label=f"{coll}, {where}")
        colours.setdefault(coll, line.get_color())
        labels.append(line.get_label())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title("pyxccl-perf: out of place (solid) and in place (dashed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return labels
