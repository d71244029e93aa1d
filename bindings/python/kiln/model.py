"""kiln.Model (a loaded GGUF model and its tokenizer), kiln.Detokenizer
(streaming detokenizer) and the log sinks.

Ownership: a Model owns one reference to its C model and releases it in
close() (idempotent; also called by `with` and by garbage collection).
Contexts, drafts and detokenizers created from it hold their own C
reference and a Python reference to the Model, so any close or collection
order is safe; after close() only the Model's own methods raise.

Thread-safety: as in C, a model may be used by several threads at once
(tokenize, detokenize and info are thread-safe); ctypes releases the GIL
during every kiln call.
"""

import ctypes
import sys
import traceback

from . import _lib
from .errors import check, closed, error

_lib_ = _lib.lib
_MISSING = object()

# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------

# Every trampoline ever given to C as a process default stays referenced:
# a log call racing kiln_log_set_default may still run the previous one.
_default_sinks = []


def _log_trampoline(fn):
    """A LOG_FN calling fn(level, message). An exception in fn cannot travel
    through C: it is printed to stderr and dropped."""

    def tramp(level, msg, user):
        try:
            fn(int(level), (msg or b"").decode("utf-8", "replace"))
        except BaseException:  # noqa: B902 - nothing may unwind into C
            try:
                traceback.print_exc(file=sys.stderr)
            except BaseException:
                pass

    return _lib.LOG_FN(tramp)


def set_log_handler(fn, max_level=_lib.LOG_ERROR):
    """Sets the process default log sink (kiln_log_set_default): fn(level,
    message) for messages at or below max_level (LOG_ERROR..LOG_DEBUG) from
    handles created without a sink of their own. fn=None restores the
    built-in default (errors to stderr). May be called from any thread."""
    if fn is None:
        _lib_.kiln_log_set_default(_lib.LOG_FN(), None, int(max_level))
        return
    cb = _log_trampoline(fn)
    _default_sinks.append(cb)
    _lib_.kiln_log_set_default(cb, None, int(max_level))


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

class Model:
    """A GGUF model loaded with kiln_model_load.

    Model(path, backend=None, device=0, no_mmap=False, vocab_only=False,
          log=None, log_level=LOG_ERROR, split=None)

    backend: "cpu" (None), "cuda", "vulkan". split: the layers across
    devices, "BACKEND:DEVICE[:N_LAYERS],..." in layer order (e.g.
    "cuda:0:16,cuda:1"; overrides backend/device). log: fn(level, message), this
    model's sink (its contexts use it too unless they have their own).
    Raises a KilnError (KilnIOError, FormatError, ...) on failure.
    """

    def __init__(self, path, backend=None, device=0, no_mmap=False, vocab_only=False,
                 log=None, log_level=_lib.LOG_ERROR, split=None):
        self._h = None
        self.path = path
        p = _lib.ModelParams.new()
        p.flags = (_lib.MODEL_NO_MMAP if no_mmap else 0) | \
                  (_lib.MODEL_VOCAB_ONLY if vocab_only else 0)
        self._backend = _lib.cstr(backend)  # referenced by p during the call
        p.backend = self._backend
        p.device = int(device)
        self._split = _lib.cstr(split)  # referenced by p during the call
        p.split = self._split
        p.log_level = int(log_level)
        # Kept for the model's whole C lifetime: contexts log through it and
        # hold this object, so it outlives every C user.
        self._log_cb = _log_trampoline(log) if log is not None else None
        if self._log_cb is not None:
            p.log_fn = self._log_cb
        h = ctypes.c_void_p()
        check(_lib_.kiln_model_load(_lib.cstr(path), ctypes.byref(p), ctypes.byref(h)))
        self._h = h.value
        self._n_vocab = _lib_.kiln_model_n_vocab(self._h)

    # -- lifetime ----------------------------------------------------------

    def close(self):
        """Releases this reference to the C model (contexts keep theirs).
        Idempotent."""
        h, self._h = self._h, None
        if h:
            _lib_.kiln_model_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def closed(self):
        return self._h is None

    @property
    def handle(self):
        """The kiln_model * as an int (raises if closed)."""
        if not self._h:
            raise closed("Model")
        return self._h

    def __repr__(self):
        return "<kiln.Model %r%s>" % (self.path, " closed" if self.closed else "")

    # -- information -------------------------------------------------------

    def info(self):
        """kiln_model_get_info: a ModelInfo (arch, name, n_vocab, n_layer,
        n_params, size_bytes, bos, eos, ...)."""
        info = _lib.ModelInfo.new()
        check(_lib_.kiln_model_get_info(self.handle, ctypes.byref(info)))
        return info

    def meta(self, key, default=_MISSING):
        """The string value of GGUF metadata key `key` (kiln_model_meta_str),
        e.g. "tokenizer.chat_template". A missing key returns `default` if
        given, else raises NotFoundError; a non-string value raises
        InvalidArgumentError."""
        h, k = self.handle, _lib.cstr(key)
        n = ctypes.c_size_t()
        for _ in range(3):
            st = _lib_.kiln_model_meta_str(h, k, None, 0, ctypes.byref(n))
            if st == _lib.E_NOT_FOUND and default is not _MISSING:
                return default
            check(st)
            buf = ctypes.create_string_buffer(max(n.value, 1))
            st = _lib_.kiln_model_meta_str(h, k, buf, len(buf), ctypes.byref(n))
            if st != _lib.E_BUFFER_TOO_SMALL:
                check(st)
                return buf.value.decode("utf-8", "replace")
        raise error(_lib.E_INTERNAL, "kiln_model_meta_str: size keeps changing")

    @property
    def n_vocab(self):
        self.handle
        return self._n_vocab

    @property
    def bos(self):
        """The BOS token id, -1 if none."""
        return _lib_.kiln_token_bos(self.handle)

    @property
    def eos(self):
        """The EOS token id, -1 if none."""
        return _lib_.kiln_token_eos(self.handle)

    def is_eog(self, token):
        """True if the token ends generation (EOS, EOT, ...)."""
        return bool(_lib_.kiln_token_is_eog(self.handle, int(token)))

    # -- tokenizer ---------------------------------------------------------

    def tokenize(self, text, add_bos=True, parse_special=False):
        """Token ids of text (str, UTF-8 encoded, or bytes). add_bos adds
        BOS if the model wants one; parse_special turns special-token text
        ("<|eos|>") into its id."""
        h = self.handle
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        flags = (_lib.TOKENIZE_ADD_BOS if add_bos else 0) | \
                (_lib.TOKENIZE_PARSE_SPECIAL if parse_special else 0)
        n = ctypes.c_size_t()
        cap = len(data) + 4  # rarely more tokens than bytes (+BOS)
        for _ in range(2):
            buf = (ctypes.c_int32 * cap)()
            st = _lib_.kiln_tokenize(h, data, len(data), flags, buf, cap, ctypes.byref(n))
            if st == _lib.E_BUFFER_TOO_SMALL:
                cap = n.value
                continue
            check(st)
            return list(buf[:n.value])
        raise error(_lib.E_INTERNAL, "kiln_tokenize: size changed between calls")

    def detokenize_bytes(self, tokens, skip_special=False):
        """The bytes of tokens (kiln_detokenize), not necessarily valid
        UTF-8 (a character may be split across a token boundary)."""
        h = self.handle
        arr = _lib.int32_array(tokens)
        flags = _lib.DETOK_SKIP_SPECIAL if skip_special else 0
        n = ctypes.c_size_t()
        check(_lib_.kiln_detokenize(h, arr, len(arr), flags, None, 0, ctypes.byref(n)))
        buf = ctypes.create_string_buffer(max(n.value, 1))
        check(_lib_.kiln_detokenize(h, arr, len(arr), flags, buf, n.value, ctypes.byref(n)))
        return buf.raw[:n.value]

    def detokenize(self, tokens, skip_special=False):
        """The text of tokens as str (invalid UTF-8 becomes U+FFFD)."""
        return self.detokenize_bytes(tokens, skip_special).decode("utf-8", "replace")

    def detokenizer(self, skip_special=False):
        """A streaming Detokenizer for this model."""
        return Detokenizer(self, skip_special)


class Detokenizer:
    """Streaming detokenizer (kiln_detokenizer_*): push(token) returns only
    complete UTF-8 text, holding back a character split across tokens;
    flush() returns what is held back and resets. Keeps its model alive."""

    def __init__(self, model, skip_special=False):
        self._h = None
        self.model = model  # the C detokenizer holds its own model reference
        h = ctypes.c_void_p()
        flags = _lib.DETOK_SKIP_SPECIAL if skip_special else 0
        check(_lib_.kiln_detokenizer_create(model.handle, flags, ctypes.byref(h)))
        self._h = h.value
        self._buf = ctypes.create_string_buffer(256)

    def _call(self, fn, *args):
        if not self._h:
            raise closed("Detokenizer")
        n = ctypes.c_size_t()
        st = fn(self._h, *args, self._buf, len(self._buf), ctypes.byref(n))
        if st == _lib.E_BUFFER_TOO_SMALL:  # nothing changed: retry bigger
            self._buf = ctypes.create_string_buffer(n.value)
            st = fn(self._h, *args, self._buf, len(self._buf), ctypes.byref(n))
        check(st)
        return self._buf.raw[:n.value]

    def push_bytes(self, token):
        return self._call(_lib_.kiln_detokenizer_push, int(token))

    def push(self, token):
        """The text that `token` completes (often "" or one piece)."""
        return self.push_bytes(token).decode("utf-8", "replace")

    def flush_bytes(self):
        return self._call(_lib_.kiln_detokenizer_flush)

    def flush(self):
        """Whatever is held back (invalid sequences as U+FFFD); resets."""
        return self.flush_bytes().decode("utf-8", "replace")

    def close(self):
        h, self._h = self._h, None
        if h:
            _lib_.kiln_detokenizer_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
