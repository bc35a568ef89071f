"""The data-movement operations of the ProcessGroup (no arithmetic): broadcast, gathers, scatters, all-to-all.

Tensors travel as bytes (any dtype). A list of tensors (``all_gather``, ``gather``,
``scatter``, ``all_to_all`` and their uneven forms) is packed into / unpacked from one
staging buffer around one pyxccl call (the v-collective when the sizes differ); the
single-tensor forms (``all_gather_into_tensor``, ``all_to_all_single``) hand the tensors'
own memory to pyxccl.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import _tensors as T
from ._errors import BACKEND, PyxcclInvalidArgument, unsupported
from ._tensors import Opts, opt
from ._work import Work


class Movement:
    """Mixin of :class:`~pyxccl.torch.process_group.ProcessGroupPyxccl` (uses its ``_comm``, ``_run``, ...)."""

    def broadcast(self, tensors: Any, opts: Any = None) -> Work:
        if type(opts) is dist.BroadcastOptions and type(tensors) is list and len(tensors) == 1 and \
                T.plain_any(tensors[0]):  # the fast path of torch's own calls
            t = tensors[0]
            comm, b, root = self._comm, t.numpy() if t.dtype in T._NUMPY else T.np_bytes(t), opts.rootRank
            return self._run("broadcast", lambda: comm.broadcast(b, root=root), tensors, opts, True)
        if opts is not None and isinstance(opts, int):  # pg.broadcast(t, root) overload
            opts = Opts(rootRank=opts)
        t = self._single(tensors, "broadcast")
        root = opt(opts, "rootRank", 0)
        comm = self._comm
        if t.is_contiguous():
            b = T.np_bytes(t)

            def run() -> None:
                comm.broadcast(b, root=root)
        else:
            def run() -> None:
                s = T.staged(t)
                comm.broadcast(T.np_bytes(s.flat), root=root)
                s.done()
        return self._run("broadcast", run, [t], opts)

    def _gather_into(self, out_flat: torch.Tensor, inp: torch.Tensor, sizes: list[int]) -> None:
        """allgather of byte blocks of ``sizes`` (bytes per rank) into ``out_flat`` (uint8)."""
        inb = T.np_bytes(inp.contiguous())
        if all(s == sizes[0] for s in sizes):
            self._comm.all_gather(inb, T.np_bytes(out_flat))
        else:
            self._comm.all_gatherv(inb, T.np_bytes(out_flat), sizes)

    def allgather(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        inp = self._one(input_tensors, "allgather")
        outs = output_tensors[0] if output_tensors and isinstance(output_tensors[0], (list, tuple)) else output_tensors
        if len(output_tensors) > 1 and isinstance(output_tensors[0], (list, tuple)):
            raise unsupported("allgather", "several output lists per rank (the multi-device form)")
        outs = [T.check_tensor(o, "allgather") for o in outs]
        if len(outs) != self._size:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: allgather: the output list has {len(outs)} tensors; the "
                                        f"group has {self._size} ranks")
        if any(o.dtype != inp.dtype for o in outs):
            raise PyxcclInvalidArgument(f"{BACKEND} backend: allgather: output and input dtypes differ")
        sizes = [T.nbytes(o) for o in outs]
        if sizes[self._rank] != T.nbytes(inp):
            raise PyxcclInvalidArgument(f"{BACKEND} backend: allgather: this rank's output tensor has "
                                        f"{outs[self._rank].numel()} elements, the input {inp.numel()}")

        def run() -> None:
            tmp = T.scratch(sum(sizes), torch.uint8, inp)
            self._gather_into(tmp, inp, sizes)
            with torch.no_grad():
                off = 0
                for o, n in zip(outs, sizes):
                    o.copy_(tmp[off:off + n].view(o.dtype).view(o.shape))
                    off += n
        return self._run("allgather", run, outs, opts)

    def _allgather_base(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        if T.plain_any(output) and T.plain_any(input) and output.dtype == input.dtype and opts is not None:
            comm, x, y = self._comm, T.np_bytes(input), T.np_bytes(output)  # pyxccl checks the sizes
            return self._run("all_gather_into_tensor", lambda: comm.all_gather(x, y), [output], opts, True)
        out = T.check_tensor(output, "all_gather_into_tensor")
        inp = T.check_tensor(input, "all_gather_into_tensor")
        if out.numel() != inp.numel() * self._size or out.dtype != inp.dtype:
            raise PyxcclInvalidArgument(
                f"{BACKEND} backend: all_gather_into_tensor: the output must have group size ({self._size}) times the "
                f"input's {inp.numel()} elements of its dtype; it has {out.numel()} of {out.dtype}")
        comm = self._comm
        if out.is_contiguous() and inp.is_contiguous():
            x, y = T.np_bytes(inp), T.np_bytes(out)

            def run() -> None:
                comm.all_gather(x, y)
        else:
            def run() -> None:
                s = T.staged(out, load=False)
                comm.all_gather(T.np_bytes(inp.contiguous()), T.np_bytes(s.flat))
                s.done()
        return self._run("all_gather_into_tensor", run, [out], opts)

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        return self._allgather_base(output, input, opts)

    def allgather_coalesced(self, output_lists: list, input_list: list, opts: Any = None) -> Work:
        """output_lists[q][i] receives rank q's input_list[i]: one allgather of every rank's packed inputs."""
        if len(output_lists) != self._size:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: allgather_coalesced: {len(output_lists)} output lists; "
                                        f"the group has {self._size} ranks (one list per rank)")
        ins = [T.check_tensor(t, "allgather_coalesced") for t in input_list]
        outs = [[T.check_tensor(t, "allgather_coalesced") for t in lst] for lst in output_lists]
        mine = outs[self._rank]
        if len(mine) != len(ins) or any(T.nbytes(o) != T.nbytes(i) for o, i in zip(mine, ins)):
            raise PyxcclInvalidArgument(f"{BACKEND} backend: allgather_coalesced: this rank's output list does not "
                                        "match its input list in count and sizes")
        sizes = [sum(T.nbytes(t) for t in lst) for lst in outs]

        def run() -> None:
            with torch.no_grad():
                packed = torch.cat([t.detach().reshape(-1).view(torch.uint8) if t.numel() else
                                    T.scratch(0, torch.uint8, t) for t in ins]) if ins else \
                    T.scratch(0, torch.uint8, mine[0] if mine else torch.empty(0))
            tmp = T.scratch(sum(sizes), torch.uint8, packed)
            self._gather_into(tmp, packed, sizes)
            with torch.no_grad():
                off = 0
                for lst in outs:
                    for o in lst:
                        n = T.nbytes(o)
                        o.copy_(tmp[off:off + n].view(o.dtype).view(o.shape))
                        off += n
        return self._run("allgather_coalesced", run, [t for lst in outs for t in lst], opts)

    def all_gather_single_coalesced(self, outputs: list, inputs: list, opts: Any = None) -> Work:
        pairs = list(zip(outputs, inputs))
        for o, i in pairs:
            T.check_tensor(o, "all_gather_into_tensor_coalesced")
            T.check_tensor(i, "all_gather_into_tensor_coalesced")
            if o.numel() != i.numel() * self._size:
                raise PyxcclInvalidArgument(f"{BACKEND} backend: all_gather_into_tensor_coalesced: an output is not "
                                            f"{self._size} times its input")

        def run() -> None:
            for o, i in pairs:
                s = T.staged(o, load=False)
                self._comm.all_gather(T.np_bytes(i.contiguous()), T.np_bytes(s.flat))
                s.done()
        return self._run("all_gather_into_tensor_coalesced", run, list(outputs), opts)

    def allgather_into_tensor_coalesced(self, outputs: list, inputs: list, opts: Any = None) -> Work:
        return self.all_gather_single_coalesced(outputs, inputs, opts)

    def gather(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        inp = self._one(input_tensors, "gather")
        root = opt(opts, "rootRank", 0)
        outs: list[torch.Tensor] = []
        if self._rank == root:
            outs = output_tensors[0] if output_tensors and isinstance(output_tensors[0], (list, tuple)) \
                else output_tensors
            outs = [T.check_tensor(o, "gather") for o in outs]
            if len(outs) != self._size:
                raise PyxcclInvalidArgument(f"{BACKEND} backend: gather: the gather list has {len(outs)} tensors; the "
                                            f"group has {self._size} ranks")
            if any(T.nbytes(o) != T.nbytes(inp) or o.dtype != inp.dtype for o in outs):
                raise PyxcclInvalidArgument(f"{BACKEND} backend: gather: every tensor of the gather list must match "
                                            "the input's size and dtype")
        elif output_tensors and any(len(x) if isinstance(x, (list, tuple)) else 1 for x in output_tensors):
            raise PyxcclInvalidArgument(f"{BACKEND} backend: gather: only the root (rank {root}) takes a gather list")
        comm, me, size = self._comm, self._rank, self._size

        def run() -> None:
            inb = T.np_bytes(inp.contiguous())
            if me != root:
                comm.gather(inb, None, root=root)
                return
            n = T.nbytes(inp)
            tmp = T.scratch(n * size, torch.uint8, inp)
            comm.gather(inb, T.np_bytes(tmp), root=root)
            with torch.no_grad():
                for q, o in enumerate(outs):
                    o.copy_(tmp[q * n:(q + 1) * n].view(o.dtype).view(o.shape))
        return self._run("gather", run, outs, opts)

    def scatter(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> Work:
        out = self._one(output_tensors, "scatter")
        root = opt(opts, "rootRank", 0)
        ins: list[torch.Tensor] = []
        if self._rank == root:
            ins = input_tensors[0] if input_tensors and isinstance(input_tensors[0], (list, tuple)) else input_tensors
            ins = [T.check_tensor(i, "scatter") for i in ins]
            if len(ins) != self._size:
                raise PyxcclInvalidArgument(f"{BACKEND} backend: scatter: the scatter list has {len(ins)} tensors; the "
                                            f"group has {self._size} ranks")
            if any(T.nbytes(i) != T.nbytes(out) or i.dtype != out.dtype for i in ins):
                raise PyxcclInvalidArgument(f"{BACKEND} backend: scatter: every tensor of the scatter list must match "
                                            "the output's size and dtype")
        elif input_tensors and any(len(x) if isinstance(x, (list, tuple)) else 1 for x in input_tensors):
            raise PyxcclInvalidArgument(f"{BACKEND} backend: scatter: only the root (rank {root}) takes a scatter list")
        comm, me = self._comm, self._rank

        def run() -> None:
            s = T.staged(out, load=False)
            if me == root:
                with torch.no_grad():
                    packed = torch.cat([i.detach().reshape(-1).view(torch.uint8) if i.numel() else
                                        T.scratch(0, torch.uint8, i) for i in ins])
                comm.scatter(T.np_bytes(packed), T.np_bytes(s.flat), root=root)
            else:
                comm.scatter(None, T.np_bytes(s.flat), root=root)
            s.done()
        return self._run("scatter", run, [out], opts)

    def alltoall(self, output_tensors: list, input_tensors: list, opts: Any = None) -> Work:
        outs = [T.check_tensor(o, "alltoall") for o in output_tensors]
        ins = [T.check_tensor(i, "alltoall") for i in input_tensors]
        if len(outs) != self._size or len(ins) != self._size:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: alltoall: the lists need one tensor per rank "
                                        f"({self._size}); got {len(outs)} outputs and {len(ins)} inputs")
        send = [T.nbytes(i) for i in ins]
        recv = [T.nbytes(o) for o in outs]

        def run() -> None:
            with torch.no_grad():
                packed = torch.cat([i.detach().reshape(-1).view(torch.uint8) if i.numel() else
                                    T.scratch(0, torch.uint8, i) for i in ins])
            tmp = T.scratch(sum(recv), torch.uint8, packed)
            if all(c == send[0] for c in send + recv):
                self._comm.all_to_all(T.np_bytes(packed), T.np_bytes(tmp))
            else:
                self._comm.all_to_allv(T.np_bytes(packed), T.np_bytes(tmp), send, recv)
            with torch.no_grad():
                off = 0
                for o, n in zip(outs, recv):
                    o.copy_(tmp[off:off + n].view(o.dtype).view(o.shape))
                    off += n
        return self._run("alltoall", run, outs, opts)

    def alltoall_base(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes: list,
                      input_split_sizes: list, opts: Any = None) -> Work:
        if not output_split_sizes and not input_split_sizes and opts is not None and T.plain_any(output) \
                and T.plain_any(input) and output.dtype == input.dtype:  # the fast path: equal blocks
            comm, x, y = self._comm, T.np_bytes(input), T.np_bytes(output)  # pyxccl checks the sizes
            return self._run("all_to_all_single", lambda: comm.all_to_all(x, y), [output], opts, True)
        out = T.check_tensor(output, "all_to_all_single")
        inp = T.check_tensor(input, "all_to_all_single")
        if out.dtype != inp.dtype:
            raise PyxcclInvalidArgument(f"{BACKEND} backend: all_to_all_single: input and output dtypes differ")
        size = self._size

        def row_bytes(t: torch.Tensor) -> int:
            return (int(np.prod(t.shape[1:])) if t.dim() > 0 else 1) * t.element_size()

        if output_split_sizes or input_split_sizes:
            ins = list(input_split_sizes) or [inp.shape[0] // size] * size
            outs = list(output_split_sizes) or [out.shape[0] // size] * size
            if len(ins) != size or len(outs) != size or sum(ins) != inp.shape[0] or sum(outs) != out.shape[0]:
                raise PyxcclInvalidArgument(f"{BACKEND} backend: all_to_all_single: split sizes {outs} / {ins} do not "
                                            f"fit {size} ranks and the tensors' first dimensions")
            send = [s * row_bytes(inp) for s in ins]
            recv = [s * row_bytes(out) for s in outs]
        else:
            if inp.numel() % size or out.numel() != inp.numel():
                raise PyxcclInvalidArgument(f"{BACKEND} backend: all_to_all_single: input and output need the same "
                                            f"number of elements, divisible by the group size {size}")
            send = recv = None
        comm = self._comm

        even = send is None or all(c == send[0] for c in send + recv)
        if even and out.is_contiguous() and inp.is_contiguous():
            x, y = T.np_bytes(inp), T.np_bytes(out)

            def run() -> None:
                comm.all_to_all(x, y)
            return self._run("all_to_all_single", run, [out], opts)

        def run() -> None:
            s = T.staged(out, load=False)
            src = T.np_bytes(inp.contiguous())
            if even:
                comm.all_to_all(src, T.np_bytes(s.flat))
            else:
                comm.all_to_allv(src, T.np_bytes(s.flat), send, recv)
            s.done()
        return self._run("all_to_all_single", run, [out], opts)

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes: list,
                          input_split_sizes: list, opts: Any = None) -> Work:
        return self.alltoall_base(output, input, output_split_sizes, input_split_sizes, opts)
