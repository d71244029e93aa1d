"""kiln - Python binding (ctypes) of libkiln, an embeddable inference
library for LLMs in GGUF files.

    import kiln
    with kiln.Model("model.gguf") as model, kiln.Context(model, n_ctx=1024) as ctx:
        for piece in ctx.generate("In the beginning", max_tokens=32, temperature=0):
            print(piece, end="", flush=True)

The library is found through $KILN_LIBRARY (a path), then a build tree or
install prefix this package sits in, then the system's search for
libkiln.so.0. Every failure raises a KilnError subclass carrying .status,
.name and .message. Handles close deterministically (close(), `with`) and
on garbage collection, in any order. See bindings/python/README.md.
"""

import ctypes as _ctypes

from . import _lib
from ._lib import (ContextParams, DeviceInfo, DraftParams, DraftStats, KvStats, ModelInfo,
                   ModelParams, PoolStats, QuantizeParams, SamplerParams, library_path,
                   LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG, SUSPEND_KV, SUSPEND_WEIGHTS,
                   DEVICE_HOST_MEMORY)
from .errors import (KilnError, InvalidArgumentError, KilnIOError, FormatError,
                     UnsupportedError, HostMemoryError, DeviceMemoryError, BackendError,
                     ContextFullError, BusyError, CancelledError, NotFoundError,
                     BufferTooSmallError, IncompatibleError, InternalError, STATUS_NAMES,
                     status_str)
from .model import Model, Detokenizer, set_log_handler
from .sampling import Sampler
from .context import Context, KV, Batch
from .draft import Draft
from .quantize import quantize, FTYPES, QUANTIZE_PURE, QUANTIZE_ALLOW_REQUANTIZE

__version__ = _lib.lib.kiln_version().decode()


def version():
    """The loaded library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.lib.kiln_version().decode()


def last_error():
    """kiln_last_error() of this thread ("" if none)."""
    return (_lib.lib.kiln_last_error() or b"").decode("utf-8", "replace")


def device_count(backend=None):
    """Number of devices of a backend ("cpu" when None). Raises
    NotFoundError if the backend is unknown or cannot be loaded."""
    n = _lib.lib.kiln_backend_device_count(_lib.cstr(backend))
    if n < 0:
        raise NotFoundError(_lib.E_NOT_FOUND, last_error())
    return n


def device_info(backend=None, index=0):
    """A DeviceInfo (name, backend, mem_total, mem_free, flags) for device
    `index` of a backend, without creating a device context."""
    from .errors import check
    info = DeviceInfo.new()
    check(_lib.lib.kiln_backend_device_info(_lib.cstr(backend), int(index),
                                            _ctypes.byref(info)))
    return info


def devices(backend=None):
    """DeviceInfo of every device of a backend."""
    return [device_info(backend, i) for i in range(device_count(backend))]


__all__ = [
    "Model", "Context", "KV", "Batch", "Sampler", "Detokenizer", "Draft",
    "KilnError", "InvalidArgumentError", "KilnIOError", "FormatError", "UnsupportedError",
    "HostMemoryError", "DeviceMemoryError", "BackendError", "ContextFullError", "BusyError",
    "CancelledError", "NotFoundError", "BufferTooSmallError", "IncompatibleError",
    "InternalError", "STATUS_NAMES", "status_str",
    "ModelParams", "ModelInfo", "ContextParams", "PoolStats", "KvStats", "SamplerParams",
    "DeviceInfo", "DraftParams", "DraftStats",
    "set_log_handler", "version", "last_error", "device_count", "device_info", "devices",
    "library_path", "LOG_ERROR", "LOG_WARN", "LOG_INFO", "LOG_DEBUG", "SUSPEND_KV",
    "SUSPEND_WEIGHTS", "DEVICE_HOST_MEMORY",
]
