"""Named passes over IR programs. :mod:`.direct`: which steps may read or write a peer's
memory directly (single copy) and which local copies may move a whole chunk at once,
decided from the program alone, for any transport that can."""
