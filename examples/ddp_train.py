"""Train a small model with DistributedDataParallel on pyxccl (or Gloo, to compare).

    torchrun --nproc-per-node 2 examples/ddp_train.py --backend pyxccl
    pyxccl-run -n 2 examples/ddp_train.py --backend pyxccl --steps 300
    pyxccl-run -n 2 examples/ddp_train.py --backend gloo --save /tmp/gloo.pt

Every rank builds the same model from ``--seed`` and draws its own shard of a fixed
synthetic regression task (a random teacher MLP, noise added); DDP averages the
gradients over the ranks after every backward pass (bucketed all-reduces that overlap
with the backward, on pyxccl's communicator). Rank 0 prints the loss now and then and,
with ``--save``, writes the final parameters, so that runs on the two backends can be
compared: from the same seed they agree to float32 reduction-order tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
if os.path.isdir(os.path.join(SRC, "pyxccl")):
    sys.path.insert(0, os.path.abspath(SRC))  # the checkout's pyxccl, installed or not


def make_model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(16, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 4))


def make_data(seed: int, rank: int, world: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of a fixed regression task: ``n`` samples per rank."""
    g = torch.Generator().manual_seed(seed + 1000)
    teacher = make_model(32)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        x = torch.randn(n * world, 16, generator=g)
        y = teacher(x) + 0.05 * torch.randn(n * world, 4, generator=g)
    return x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["pyxccl", "gloo"], default="pyxccl")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="rank 0 writes the final parameters here (torch.save)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the model and data live (cuda: every rank on cuda:LOCAL_RANK %% device count)")
    args = p.parse_args(argv)

    if args.backend == "pyxccl":
        import pyxccl.torch  # noqa: F401 - registers the "pyxccl" backend
    torch.set_num_threads(1)
    dist.init_process_group(args.backend)  # env:// from torchrun / pyxccl-run
    rank, world = dist.get_rank(), dist.get_world_size()

    dev = torch.device("cpu")
    if args.device == "cuda":
        import os
        dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}")
        torch.cuda.set_device(dev)
    torch.manual_seed(args.seed)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    model = nn.parallel.DistributedDataParallel(make_model(args.width).to(dev))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x, y = make_data(args.seed, rank, world, n=args.batch * 8)
    x, y = x.to(dev), y.to(dev)
    order = torch.Generator().manual_seed(args.seed + rank)

    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, x.shape[0], (args.batch,), generator=order).to(dev)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here
        opt.step()
        if args.log_every and (step % args.log_every == 0 or step == args.steps - 1):
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            if rank == 0:
                print(f"[{args.backend}] step {step:4d}  loss {mean.item() / world:.5f}", flush=True)
    secs = time.perf_counter() - t0
    if rank == 0:
        print(f"[{args.backend}] {args.steps} steps on {world} ranks in {secs:.2f} s "
              f"({secs / max(args.steps, 1) * 1e3:.2f} ms/step)", flush=True)
        if args.save:
            torch.save({k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}, args.save)
    dist.barrier()  # nobody tears its process group down while a peer still uses it (gloo aborts then)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
