"""kiln.quantize(): a GGUF model file to a GGUF model file with its weights
in another type (kiln_model_quantize; the example kiln-quantize does the
same from the command line)."""

import ctypes

from . import _lib
from .errors import check

# KILN_FTYPE_* of include/kiln.h (GGUF's general.file_type values).
FTYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
    "q4_k": 14, "q4_k_m": 15, "q5_k": 16, "q5_k_m": 17, "q6_k": 18, "bf16": 32,
}
QUANTIZE_PURE = 1 << 0
QUANTIZE_ALLOW_REQUANTIZE = 1 << 1


def quantize(src, dst, ftype="q4_k_m", threads=0, pure=False, allow_requantize=False,
             progress=None):
    """Writes the model at `src` as `dst` with its weights in `ftype` (a
    name of FTYPES, or a KILN_FTYPE_* number). `progress(i, n, name, type)`
    is called before each tensor (type: the GGUF type id it is written in);
    a true return value cancels (CancelledError), and an exception in it
    cancels and is re-raised. A failure leaves no file at `dst`."""
    p = _lib.QuantizeParams.new()
    if isinstance(ftype, str):
        if ftype.lower() not in FTYPES:
            raise ValueError("unknown ftype %r (one of %s)" % (ftype, ", ".join(FTYPES)))
        ftype = FTYPES[ftype.lower()]
    p.ftype = int(ftype)
    p.n_threads = int(threads)
    p.flags = (QUANTIZE_PURE if pure else 0) | (QUANTIZE_ALLOW_REQUANTIZE if allow_requantize else 0)
    raised = []
    if progress is not None:
        def trampoline(i, n, name, type_, user):
            try:
                return 1 if progress(int(i), int(n), name.decode("utf-8", "replace"), int(type_)) else 0
            except BaseException as e:  # noqa: B902 - handed back to the caller below
                raised.append(e)
                return 1
        cb = _lib.QUANTIZE_PROGRESS_FN(trampoline)
        p.progress = cb
    st = _lib.lib.kiln_model_quantize(_lib.cstr(src), _lib.cstr(dst), ctypes.byref(p))
    if raised:
        raise raised[0]
    check(st)
