"""The IR: MSCCL-shaped programs (:mod:`.program`), their builder, verifier and XML form."""

from .program import Buf, Op, Program, RankProgram, Step, ThreadBlock

__all__ = ["Buf", "Op", "Program", "RankProgram", "Step", "ThreadBlock"]
