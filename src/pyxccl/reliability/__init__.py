"""Reliability: peer health (:mod:`.health`), the flight recorder (:mod:`.flight`) and the
collective mismatch check (:mod:`.mismatch`, ``PYXCCL_CHECK``)."""
