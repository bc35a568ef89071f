"""The host executor: Python runners that advance over a :class:`~pyxccl.runtime.plan.RankPlan`
and poll transport connectors (:mod:`.executor`), their single-copy strategy (:mod:`.single_copy`),
send/recv runners (:mod:`.p2p`) and the per-call path choice (:mod:`.path_choice`, :mod:`.path_board`)."""
