"""Command-line tools: pyxccl-run, pyxccl-perf, pyxccl-topo, pyxccl-doctor."""
