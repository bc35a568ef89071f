"""A real GPU through NVIDIA's cuda-python (``cuda.bindings.driver``): the device contract of
:mod:`.device` on the CUDA driver API.

Every method makes the device's primary context current on the calling thread first (the
driver's context is per thread; pyxccl's call queue and proxy threads are not torch's).
Shareable memory is VMM memory (``cuMemCreate`` with ``CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR``,
exported as a file descriptor, imported by peers with ``cuMemImportFromShareableHandle``, then
reserved, mapped and made accessible), the way torch's symmetric memory and NCCL's cuMem path
share memory; never multicast. Host reads and writes go through a private non-blocking stream,
so they never queue behind the legacy default stream (which may be waiting on pyxccl's work).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from ..errors import CudaError
from .device import SharedBlock

try:  # the optional extra "cuda"
    from cuda.bindings import driver as cu
except ImportError:  # pragma: no cover - without cuda-python
    cu = None  # type: ignore[assignment]


def check(result: Any, what: str) -> Any:
    """The values of a cuda-python call's ``(CUresult, values...)`` tuple, or CudaError."""
    err = result[0]
    if err != cu.CUresult.CUDA_SUCCESS:
        _, name = cu.cuGetErrorName(err)
        raise CudaError(f"CUDA driver: {what} failed with {name.decode() if isinstance(name, bytes) else name}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


_init_lock = threading.Lock()
_initialized = False


def init() -> int:
    """Initialize the driver once; the number of devices (CudaError when there is no driver)."""
    global _initialized
    if cu is None:
        raise CudaError("cuda-python is not installed: pip install 'pyxccl[cuda]' (cuda-bindings) for CUDA buffers")
    with _init_lock:
        if not _initialized:
            # every thread block's stream must have a hardware queue of its own: a stream waiting on
            # a flag (cuStreamWaitValue32) blocks whatever shares its queue, and the flag may be
            # written only after that work ran (the default, 8 queues, is too few for a rank's
            # thread blocks and its callers' streams). Read when the context is made: set it early.
            queues = os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")
            if queues.isdigit() and int(queues) < 16:
                from .. import log
                log.warn("CUDA_DEVICE_MAX_CONNECTIONS=%s: pyxccl's thread-block streams will share hardware "
                         "queues, and a stream waiting on a peer can hold up the work that would release it "
                         "(leave it unset, or 32)", queues)
            try:
                result = cu.cuInit(0)
            except Exception as exc:  # cuda-python raises when it finds no driver library
                raise CudaError(f"CUDA driver: not usable on this machine ({exc})") from None
            check(result, "cuInit")
            _initialized = True
    return int(check(cu.cuDeviceGetCount(), "cuDeviceGetCount"))


_WAIT_GEQ = None
_POSIX_FD = None


class CudaDevice:
    """GPU ``index`` through its primary context (shared with torch and CuPy in this process)."""

    emulated = False

    def __init__(self, index: int):
        count = init()
        if not 0 <= index < count:
            raise CudaError(f"cuda:{index} does not exist: this process sees {count} CUDA device(s)")
        global _WAIT_GEQ, _POSIX_FD
        _WAIT_GEQ = cu.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ
        _POSIX_FD = cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        self.index, self.name = index, f"cuda:{index}"
        self.dev = check(cu.cuDeviceGet(index), "cuDeviceGet")
        self.ctx = check(cu.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        self._tls = threading.local()
        self.current()
        attr = cu.CUdevice_attribute
        major = check(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.dev), "attribute")
        minor = check(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.dev), "attribute")
        self.arch = int(major) * 10 + int(minor)
        self.sms = int(check(cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, self.dev),
                             "attribute"))
        self.uuid = bytes(check(cu.cuDeviceGetUuid(self.dev), "cuDeviceGetUuid").bytes).hex()
        self._host_stream = self.stream()
        self._staging = ctypes.create_string_buffer(8)
        self._host_lock = threading.Lock()
        self._ipc: dict[bytes, int] = {}  # peers' allocations opened in this process, by handle

    def current(self) -> None:
        """Make this device's primary context current on the calling thread (once per thread)."""
        if getattr(self._tls, "ok", False):
            return
        check(cu.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        self._tls.ok = True

    # ---- streams and events
    def stream(self) -> Any:
        self.current()
        return check(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")

    def external_stream(self, handle: int) -> Any:
        return cu.CUstream(int(handle))

    def event(self) -> Any:
        self.current()
        return check(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self.current()
        check(cu.cuEventRecord(event, stream), "cuEventRecord")

    def wait_event(self, stream: Any, event: Any) -> None:
        self.current()
        check(cu.cuStreamWaitEvent(stream, event, 0), "cuStreamWaitEvent")

    def event_done(self, event: Any) -> bool:
        self.current()
        err = cu.cuEventQuery(event)[0]
        if err == cu.CUresult.CUDA_ERROR_NOT_READY:
            return False
        check((err,), "cuEventQuery")
        return True

    def event_synchronize(self, event: Any, timeout: float | None = None) -> bool:
        if timeout is None:
            self.current()
            check(cu.cuEventSynchronize(event), "cuEventSynchronize")
            return True
        import time
        end = time.monotonic() + timeout
        pause = 1e-5
        while not self.event_done(event):
            if time.monotonic() >= end:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)
        return True

    def synchronize(self, stream: Any = None) -> None:
        self.current()
        if stream is None:
            check(cu.cuCtxSynchronize(), "cuCtxSynchronize")
        else:
            check(cu.cuStreamSynchronize(stream), "cuStreamSynchronize")

    def is_capturing(self, stream: Any) -> bool:
        self.current()
        status = check(cu.cuStreamIsCapturing(stream), "cuStreamIsCapturing")
        return status != cu.CUstreamCaptureStatus.CU_STREAM_CAPTURE_STATUS_NONE

    def begin_capture(self, stream: Any) -> None:
        """Start capturing ``stream``'s work into a graph (thread-local mode: other threads unaffected)."""
        self.current()
        check(cu.cuStreamBeginCapture(stream, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
              "cuStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        """Stop capturing ``stream``; the instantiated graph, to :meth:`launch_graph`."""
        self.current()
        graph = check(cu.cuStreamEndCapture(stream), "cuStreamEndCapture")
        try:
            return check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        finally:
            cu.cuGraphDestroy(graph)

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self.current()
        check(cu.cuGraphLaunch(graph, stream), "cuGraphLaunch")

    def destroy_graph(self, graph: Any) -> None:
        self.current()
        cu.cuGraphExecDestroy(graph)

    def destroy_stream(self, stream: Any) -> None:
        self.current()
        cu.cuStreamDestroy(stream)

    def destroy_event(self, event: Any) -> None:
        self.current()
        cu.cuEventDestroy(event)

    # ---- stream-ordered operations
    def copy(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.current()
        check(cu.cuMemcpyAsync(dst, src, nbytes, stream), "cuMemcpyAsync")

    def write_value(self, address: int, value: int, stream: Any) -> None:
        self.current()
        check(cu.cuStreamWriteValue32(stream, address, value & 0xFFFFFFFF, 0), "cuStreamWriteValue32")

    def wait_value(self, address: int, value: int, stream: Any) -> None:
        self.current()
        check(cu.cuStreamWaitValue32(stream, address, value & 0xFFFFFFFF, _WAIT_GEQ), "cuStreamWaitValue32")

    def memset(self, address: int, nbytes: int, stream: Any) -> None:
        self.current()
        check(cu.cuMemsetD8Async(address, 0, nbytes, stream), "cuMemsetD8Async")

    # ---- the host's view
    def host_write_value(self, address: int, value: int) -> None:
        self.write(address, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def read(self, address: int, nbytes: int) -> bytes:
        out = ctypes.create_string_buffer(max(nbytes, 1))
        with self._host_lock:
            self.current()
            check(cu.cuMemcpyDtoHAsync(ctypes.addressof(out), address, nbytes, self._host_stream), "cuMemcpyDtoHAsync")
            check(cu.cuStreamSynchronize(self._host_stream), "cuStreamSynchronize")
        return out.raw[:nbytes]

    def write(self, address: int, data: bytes) -> None:
        src = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        with self._host_lock:
            self.current()
            check(cu.cuMemcpyHtoDAsync(address, ctypes.addressof(src), len(data), self._host_stream),
                  "cuMemcpyHtoDAsync")
            check(cu.cuStreamSynchronize(self._host_stream), "cuStreamSynchronize")

    # ---- memory
    def alloc(self, nbytes: int) -> int:
        self.current()
        return int(check(cu.cuMemAlloc(max(nbytes, 1)), f"cuMemAlloc({nbytes})"))

    def free_plain(self, address: int) -> None:
        self.current()
        cu.cuMemFree(address)

    def host_alloc(self, nbytes: int) -> int:
        self.current()
        return int(check(cu.cuMemHostAlloc(max(nbytes, 1), 0), f"cuMemHostAlloc({nbytes})"))

    def free_host(self, address: int) -> None:
        self.current()
        cu.cuMemFreeHost(address)

    def _prop(self) -> Any:
        prop = cu.CUmemAllocationProp()
        prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = self.index
        prop.requestedHandleTypes = _POSIX_FD
        return prop

    def granularity(self) -> int:
        self.current()
        flag = cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED
        return int(check(cu.cuMemGetAllocationGranularity(self._prop(), flag), "cuMemGetAllocationGranularity"))

    def _map(self, handle: Any, size: int) -> int:
        ptr = check(cu.cuMemAddressReserve(size, 0, 0, 0), "cuMemAddressReserve")
        check(cu.cuMemMap(ptr, size, 0, handle, 0), "cuMemMap")
        desc = cu.CUmemAccessDesc()
        desc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        desc.location.id = self.index
        desc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        check(cu.cuMemSetAccess(ptr, size, [desc], 1), "cuMemSetAccess")
        return int(ptr)

    def alloc_shared(self, nbytes: int) -> SharedBlock:
        self.current()
        gran = self.granularity()
        size = -(-max(nbytes, 1) // gran) * gran
        handle = check(cu.cuMemCreate(size, self._prop(), 0), f"cuMemCreate({size})")
        fd = int(check(cu.cuMemExportToShareableHandle(handle, _POSIX_FD, 0), "cuMemExportToShareableHandle"))
        address = self._map(handle, size)
        check(cu.cuMemsetD8(address, 0, size), "cuMemsetD8")
        return SharedBlock(address, size, fd, handle)

    def import_shared(self, fd: int, nbytes: int) -> SharedBlock:
        self.current()
        try:
            handle = check(cu.cuMemImportFromShareableHandle(fd, _POSIX_FD), "cuMemImportFromShareableHandle")
        finally:
            os.close(fd)
        return SharedBlock(self._map(handle, nbytes), nbytes, -1, handle, imported=True)

    def free(self, block: SharedBlock) -> None:
        self.current()
        cu.cuMemUnmap(block.address, block.nbytes)
        cu.cuMemAddressFree(block.address, block.nbytes)
        cu.cuMemRelease(block.handle)
        if block.fd >= 0:
            os.close(block.fd)
            block.fd = -1

    def export_ipc(self, address: int) -> "tuple[bytes, int] | None":
        """Legacy CUDA IPC of the allocation holding ``address`` (``cuMemAlloc`` memory, torch's and
        CuPy's caching allocators); None for memory it cannot export (VMM, host memory)."""
        self.current()
        res = cu.cuMemGetAddressRange(address)
        if res[0] != cu.CUresult.CUDA_SUCCESS:
            return None
        base = int(res[1])
        res = cu.cuIpcGetMemHandle(base)
        if res[0] != cu.CUresult.CUDA_SUCCESS:
            return None
        # the allocation's identity leads the handle: a peer opens one allocation once (a second
        # cuIpcOpenMemHandle of it fails with ALREADY_MAPPED, and its handles differ call to call),
        # and a new allocation at the same address is a new one
        ident = cu.cuPointerGetAttribute(cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_BUFFER_ID, base)
        buffer_id = int(ident[1]) if ident[0] == cu.CUresult.CUDA_SUCCESS else base
        key = f"{os.getpid()}:{buffer_id}:{base}".encode().ljust(64, b" ")
        return key + ctypes.string_at(res[1].getPtr(), 64), address - base

    def open_ipc(self, handle: bytes) -> int:
        key, raw = handle[:64], handle[64:]
        pid, _, base = key.decode().split(":")
        if int(pid) == os.getpid():  # a rank of this process: its memory is ours already
            return int(base)
        with self._host_lock:
            opened = self._ipc.get(key)
            if opened is None:
                self.current()
                h = cu.CUipcMemHandle()
                ctypes.memmove(h.getPtr(), raw, 64)
                flag = cu.CUipcMem_flags.CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
                opened = self._ipc[key] = int(check(cu.cuIpcOpenMemHandle(h, flag), "cuIpcOpenMemHandle"))
            return opened

    # ---- kernels
    def load_module(self, image: bytes) -> Any:
        self.current()
        return check(cu.cuModuleLoadData(image), "cuModuleLoadData")

    def function(self, module: Any, name: str) -> Any:
        return check(cu.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")

    def launch(self, func: Any, grid: int, block: int, args: tuple, types: tuple, stream: Any) -> None:
        self.current()
        check(cu.cuLaunchKernel(func, grid, 1, 1, block, 1, 1, 0, stream, (args, types), 0), "cuLaunchKernel")

    def run(self, stream: Any, fn: Any) -> None:
        raise CudaError("a real device runs compiled kernels, not host functions")

    def view(self, address: int, nbytes: int) -> Any:
        raise CudaError("device memory has no host view")
