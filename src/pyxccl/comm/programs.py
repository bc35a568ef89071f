"""The IR program of each call: the tuner's choice or the caller's, relabelled and verified.

A call names an algorithm (a registered name), passes its own :class:`~pyxccl.ir.program.Program`
(e.g. loaded from MSCCL XML), or leaves it to the tuner (``PYXCCL_ALGO`` rules, then
the cost model). Registered programs are built for this communicator's rank count and
hosts, cached per (collective, algorithm, bytes, root); a flat algorithm on hosts whose
ranks interleave is built for ring positions and relabelled (then verified once). A
user's program is checked against the call and verified once per object.
"""

from __future__ import annotations

from .. import algorithms, tuner
from ..config import Config
from ..errors import InvalidArgument
from ..ir.program import COLLECTIVES, Program
from ..ir.relabel import relabel
from ..ir.verify import verify
from .checks import Call

MAX_CACHED = 1024


class Programs:
    """The programs of one communicator (``size`` ranks on ``hosts``, host-contiguous ``ring`` order)."""

    def __init__(self, size: int, hosts: tuple[tuple[int, ...], ...], ring: list[int], nslots: int, cfg: Config):
        self.size, self.hosts, self.ring, self.nslots, self.cfg = size, hosts, ring, nslots, cfg
        self._verified: dict[int, Program] = {}
        self._cache: dict[tuple, Program] = {}  # (collective, algorithm, nbytes, root) -> program
        self._forced: frozenset[str] | None = None  # the collectives PYXCCL_ALGO names (parsed at first need)

    def get(self, call: Call, algorithm: "str | Program | None") -> Program:
        """The IR program for ``call``: a registered algorithm (by name or the default) or the user's own."""
        root = call.root if call.root is not None else 0
        if isinstance(algorithm, Program):
            return self._own(call, algorithm, root)
        size = self.size
        nbytes = call.count * call.dtype.itemsize * (size if COLLECTIVES[call.collective] else 1)
        key = (call.collective, algorithm, nbytes, root)
        program = self._cache.get(key)
        if program is not None:
            return program
        hosts, nchannels = self.hosts, self.cfg.nchannels
        if not algorithm:
            algorithm = tuner.select(call.collective, size, nbytes, hosts, self.cfg.algo)
        algo = algorithms.get(call.collective, algorithm)
        why = algo.unsupported(size, hosts)
        if why is not None:
            raise InvalidArgument(f"algorithm={algo.name!r}: {why}")
        if self.nslots < algo.min_slots:
            raise InvalidArgument(f"algorithm={algo.name!r} needs {algo.min_slots} slots per connection; "
                                  f"PYXCCL_NSLOTS is {self.nslots}")
        order = self.ring
        if algo.host_aware or order == list(range(size)):
            program = algorithms.program(call.collective, algo.name, size, nchannels, root, hosts)
        else:  # a flat algorithm on interleaved hosts: build it for ring positions, then relabel
            pos = order.index(root)
            flat = algorithms.program(call.collective, algo.name, size, nchannels, pos, hosts)
            program = relabel(flat, order) or algorithms.program(call.collective, algo.name, size, nchannels,
                                                                 root, hosts)
            if program is not flat and program.name.endswith("_relabeled"):
                self._verify(program)
        if len(self._cache) > MAX_CACHED:
            self._cache.clear()
        self._cache[key] = program
        return program

    def forced(self, collective: str) -> bool:
        """Whether PYXCCL_ALGO names algorithms for ``collective`` (then the tuner's other paths stay out)."""
        if self._forced is None:
            spec = tuner.spec.parse(self.cfg.algo) if self.cfg.algo else None
            self._forced = frozenset(c for c in COLLECTIVES if spec is not None and spec.get(c))
        return collective in self._forced

    def _own(self, call: Call, program: Program, root: int) -> Program:
        """Check a user's program (e.g. loaded from MSCCL XML) against the call; verify it once."""
        if program.collective != call.collective or program.nranks != self.size:
            raise InvalidArgument(f"algorithm: program {program.name!r} implements {program.collective} for "
                                  f"{program.nranks} ranks; this call is {call.collective} on {self.size}")
        if call.root is not None and (program.root or 0) != root:
            raise InvalidArgument(f"root={root}: program {program.name!r} was built for root {program.root or 0}")
        if id(program) not in self._verified:
            self._verify(program)
            self._verified[id(program)] = program
        return program

    def _verify(self, program: Program) -> None:
        for inplace in (True, False):
            if program.inplace if inplace else program.outofplace:
                verify(program, inplace=inplace, nslots=self.nslots)
