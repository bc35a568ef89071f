"""Memory: where a call's bytes live and how pyxccl sees them.

- :class:`Buffer` (:mod:`.buffer`): one argument's memory (device, address, nbytes, dtype, owner),
  with a flat numpy view only when it is host memory;
- :func:`as_buffer` (:mod:`.adapters`, the only place that knows array libraries: numpy, the
  buffer protocol, torch, CuPy and any ``__cuda_array_interface__``, DLPack), and the numpy views
  of torch CPU tensors the torch backend hands over (:func:`tensor_array`, :func:`tensor_bytes`);
- :class:`Region`, :data:`HOST`, :func:`is_host` (:mod:`.region`): bytes on a device, as
  transports describe their memory;
- :class:`DeviceArray` (:mod:`.device_array`): a flat run of device memory, sliced like the
  host's numpy views; :func:`caller_stream`: the CUDA stream a caller's array is ordered on;
- :mod:`.host`: the host memory the runtime allocates and addresses itself.
"""

from .adapters import as_buffer, caller_stream, tensor_array, tensor_bytes, torch_numpy_dtypes
from .buffer import Buffer
from .device_array import DeviceArray
from .region import HOST, Region, is_host

__all__ = ["Buffer", "DeviceArray", "HOST", "caller_stream", "Region", "as_buffer", "is_host", "tensor_array", "tensor_bytes", "torch_numpy_dtypes"]
