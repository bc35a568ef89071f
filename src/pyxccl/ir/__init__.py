"""The IR: MSCCL-shaped programs (:mod:`.program`), their builder, verifier and XML form."""

from .builder import ProgramBuilder
from .program import COLLECTIVES, Buf, Op, Program, RankProgram, Step, ThreadBlock
from .verify import verify, verify_all

__all__ = ["Buf", "COLLECTIVES", "Op", "Program", "ProgramBuilder", "RankProgram", "Step", "ThreadBlock",
           "verify", "verify_all"]
