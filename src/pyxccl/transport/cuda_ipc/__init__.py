"""The cuda_ipc transport: GPU memory of ranks on one host, moved by the copy engines and
signalled by stream memory operations (:mod:`.transport`)."""

from .connectors import CudaIpcRecvConnector, CudaIpcSendConnector
from .transport import CudaIpcTransport

__all__ = ["CudaIpcRecvConnector", "CudaIpcSendConnector", "CudaIpcTransport"]
