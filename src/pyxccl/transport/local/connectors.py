"""local's connectors: the slot ring's, over a ring in this process's memory (slots only)."""

from __future__ import annotations

from ..ring import RingRecvConnector, RingSendConnector


class LocalSendConnector(RingSendConnector):
    """The sending end towards a rank that is a thread of this process."""


class LocalRecvConnector(RingRecvConnector):
    """The receiving end from a rank that is a thread of this process."""
