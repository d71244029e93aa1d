"""kiln.KilnError and its per-status subclasses, and the check() every
wrapper calls on a kiln_status.

A failed call raises the subclass for its status (all derive from
KilnError), carrying .status (the int code of include/kiln.h), .name (the
code's name, "KILN_E_FORMAT") and .message (kiln_last_error(), read right
after the failing call, or the context's kiln_context_last_error()).
"""

from . import _lib


class KilnError(Exception):
    """A kiln call failed. `status` is the negative kiln_status code,
    `name` its symbolic name, `reason` kiln_status_str(status) and
    `message` the library's message saying what and where."""

    status = None  # set on the per-status subclasses

    def __init__(self, status, message=""):
        self.status = int(status)
        self.name = STATUS_NAMES.get(self.status, "KILN_E_%d" % -self.status)
        self.reason = status_str(self.status)
        self.message = message or ""
        text = "%s (%s)" % (self.reason, self.name)
        if self.message:
            text += ": " + self.message
        super().__init__(text)


def status_str(status):
    """kiln_status_str(): a static English description of a status."""
    return _lib.lib.kiln_status_str(int(status)).decode("utf-8", "replace")


class InvalidArgumentError(KilnError):
    pass


class KilnIOError(KilnError):
    pass


class FormatError(KilnError):
    pass


class UnsupportedError(KilnError):
    pass


class HostMemoryError(KilnError):
    pass


class DeviceMemoryError(KilnError):
    pass


class BackendError(KilnError):
    pass


class ContextFullError(KilnError):
    pass


class BusyError(KilnError):
    pass


class CancelledError(KilnError):
    """A callback asked to stop (also what an exception raised inside a
    Python ubatch callback becomes; the exception is its __cause__)."""


class NotFoundError(KilnError):
    pass


class BufferTooSmallError(KilnError):
    pass


class IncompatibleError(KilnError):
    pass


class InternalError(KilnError):
    pass


_BY_STATUS = {
    _lib.E_INVALID_ARG: ("KILN_E_INVALID_ARG", InvalidArgumentError),
    _lib.E_IO: ("KILN_E_IO", KilnIOError),
    _lib.E_FORMAT: ("KILN_E_FORMAT", FormatError),
    _lib.E_UNSUPPORTED: ("KILN_E_UNSUPPORTED", UnsupportedError),
    _lib.E_OOM_HOST: ("KILN_E_OOM_HOST", HostMemoryError),
    _lib.E_OOM_DEVICE: ("KILN_E_OOM_DEVICE", DeviceMemoryError),
    _lib.E_BACKEND: ("KILN_E_BACKEND", BackendError),
    _lib.E_CONTEXT_FULL: ("KILN_E_CONTEXT_FULL", ContextFullError),
    _lib.E_BUSY: ("KILN_E_BUSY", BusyError),
    _lib.E_CANCELLED: ("KILN_E_CANCELLED", CancelledError),
    _lib.E_NOT_FOUND: ("KILN_E_NOT_FOUND", NotFoundError),
    _lib.E_BUFFER_TOO_SMALL: ("KILN_E_BUFFER_TOO_SMALL", BufferTooSmallError),
    _lib.E_INCOMPATIBLE: ("KILN_E_INCOMPATIBLE", IncompatibleError),
    _lib.E_INTERNAL: ("KILN_E_INTERNAL", InternalError),
}
STATUS_NAMES = {code: name for code, (name, _) in _BY_STATUS.items()}
STATUS_NAMES[_lib.OK] = "KILN_OK"
for _code, (_name, _cls) in _BY_STATUS.items():
    _cls.status = _code


def error(status, message=""):
    """The exception (not raised) for a status and message."""
    cls = _BY_STATUS.get(int(status), (None, KilnError))[1]
    return cls(status, message)


def last_error(ctx_handle=None):
    """kiln_last_error() of this thread; the context's own message when the
    thread-local one is empty (e.g. read after another call cleared it)."""
    msg = _lib.lib.kiln_last_error() or b""
    if not msg and ctx_handle:
        msg = _lib.lib.kiln_context_last_error(ctx_handle) or b""
    return msg.decode("utf-8", "replace")


def check(status, ctx_handle=None):
    """Raises the KilnError subclass for a negative status; returns it
    otherwise. Must run right after the call (the message is thread-local
    and the next kiln call replaces it)."""
    if status < 0:
        raise error(status, last_error(ctx_handle))
    return status


def closed(what):
    """The error for a call on a handle that was closed."""
    return InvalidArgumentError(_lib.E_INVALID_ARG, "%s is closed" % what)
