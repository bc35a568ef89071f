"""The runtime: one rank's plan of a program (:mod:`.plan`), the kernels per device
(:mod:`.kernels`) and the executors that run plans (:mod:`.host`; the GPU's joins later)."""
