"""kiln.Sampler: a sampling chain (kiln_sampler_*).

Order (include/kiln.h): penalties, then greedy argmax if temperature <= 0,
else top-k -> top-p -> min-p -> temperature -> softmax -> seeded draw.
Same seed and inputs give the same tokens on every platform.

Ownership: the Sampler owns its C sampler; close() is idempotent and also
run by `with` and garbage collection. Not thread-safe (one thread at a time).
"""

import array
import ctypes

from . import _lib
from .errors import check, closed, error

_lib_ = _lib.lib
_FP = ctypes.POINTER(ctypes.c_float)

# Keyword -> kiln_sampler_params field; any left out keeps the library default.
_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "freq_penalty",
           "presence_penalty", "penalty_last_n", "seed")


def sampler_params(**kw):
    """A SamplerParams with the library's defaults and the given fields."""
    p = _lib.SamplerParams.new()
    for k, v in kw.items():
        if k not in _FIELDS:
            raise TypeError("unknown sampler parameter %r" % k)
        if v is not None:
            setattr(p, k, v)
    return p


class Sampler:
    """Sampler(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
    repeat_penalty=1, freq_penalty=0, presence_penalty=0,
    penalty_last_n=64, seed=0xC0FFEE) - defaults are the library's.
    temperature <= 0 is greedy (argmax, ties to the lowest id)."""

    def __init__(self, params=None, **kw):
        self._h = None
        if params is None:
            params = sampler_params(**kw)
        elif kw:
            raise TypeError("give either params or keywords")
        self.params = params
        h = ctypes.c_void_p()
        check(_lib_.kiln_sampler_create(ctypes.byref(params), ctypes.byref(h)))
        self._h = h.value

    @classmethod
    def greedy(cls):
        return cls(temperature=0.0)

    @property
    def handle(self):
        if not self._h:
            raise closed("Sampler")
        return self._h

    def sample(self, logits, n_vocab=None):
        """Picks a token from logits: a Context (its last logits), an
        array.array('f'), a ctypes float array/pointer (give n_vocab), or any
        sequence of floats. The logits are not modified."""
        from .context import Context  # circular at import time
        if isinstance(logits, Context):
            return logits.sample(self)
        if isinstance(logits, _FP):
            if n_vocab is None:
                raise TypeError("n_vocab is required with a raw pointer")
            ptr, n = logits, n_vocab
        else:
            if not isinstance(logits, array.array) or logits.typecode != "f":
                logits = array.array("f", logits)
            n = len(logits) if n_vocab is None else n_vocab
            if n > len(logits):
                raise error(_lib.E_INVALID_ARG, "n_vocab %d > %d logits" % (n, len(logits)))
            addr, _ = logits.buffer_info()
            ptr = ctypes.cast(addr, _FP)
            keep = logits  # noqa: F841 - alive during the call
        return self._sample_ptr(ptr, n)

    def _sample_ptr(self, ptr, n_vocab):
        tok = ctypes.c_int32()
        check(_lib_.kiln_sampler_sample(self.handle, ptr, int(n_vocab), ctypes.byref(tok)))
        return tok.value

    def accept(self, token):
        """Records a token in the penalty history (sample() does it for the
        tokens it returns; call it for prompt tokens)."""
        check(_lib_.kiln_sampler_accept(self.handle, int(token)))

    def reset(self, seed=None):
        """Clears the history and reseeds (seed None: the creation seed)."""
        _lib_.kiln_sampler_reset(self.handle, self.params.seed if seed is None else int(seed))

    def close(self):
        h, self._h = self._h, None
        if h:
            _lib_.kiln_sampler_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
