"""Low-level ctypes layer of the kiln binding: finding and loading libkiln,
the params/info/stats structs (mirrors of include/kiln.h, field for field),
the callback types and the prototype of every function the binding calls.

Everything here is private (the public API is in the other modules); the
struct classes are re-exported because users read stats through them.

Struct layout: each class below mirrors the C struct of the same name in
include/kiln.h with the same field order and fixed-width types. The test
test_structs.py checks sizeof and every offset against the C compiler's
view of the header, so a field appended in C without its Python mirror is
caught. The library reads only `struct_size` bytes, so an older binding
keeps working against a newer library anyway; the binding always fills
structs through the exported `kiln_*_init_sized(p, sizeof)` functions.
"""

import ctypes
import ctypes.util
import os

# ---------------------------------------------------------------------------
# Finding the library
# ---------------------------------------------------------------------------

_SONAME = "libkiln.so.0"


def _candidates():
    """Paths to try, in order: $KILN_LIBRARY, a build tree this package sits
    in (bindings/python/kiln -> build/), an install prefix this package was
    installed under (share/kiln/python/kiln -> lib/), then the system's
    search (find_library, then the SONAME for the dynamic loader)."""
    env = os.environ.get("KILN_LIBRARY")
    if env:
        yield env
        return  # an explicit choice is not second-guessed
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", "..", ".."))
    yield os.path.join(repo, "build", _SONAME)
    prefix = os.path.normpath(os.path.join(here, "..", "..", "..", ".."))
    for libdir in ("lib", "lib64"):
        yield os.path.join(prefix, libdir, _SONAME)
    found = ctypes.util.find_library("kiln")
    if found:
        yield found
    yield _SONAME


def _load():
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            errors.append("%s: not found" % path)
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            errors.append("%s: %s" % (path, e))
    raise ImportError("kiln: cannot load libkiln (set KILN_LIBRARY to its path); tried:\n  "
                      + "\n  ".join(errors))


lib, library_path = _load()

# ---------------------------------------------------------------------------
# Constants (include/kiln.h)
# ---------------------------------------------------------------------------

OK = 0
E_INVALID_ARG = -1
E_IO = -2
E_FORMAT = -3
E_UNSUPPORTED = -4
E_OOM_HOST = -5
E_OOM_DEVICE = -6
E_BACKEND = -7
E_CONTEXT_FULL = -8
E_BUSY = -9
E_CANCELLED = -10
E_NOT_FOUND = -11
E_BUFFER_TOO_SMALL = -12
E_INCOMPATIBLE = -13
E_INTERNAL = -14

LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG = 0, 1, 2, 3

MODEL_NO_MMAP = 1 << 0
MODEL_VOCAB_ONLY = 1 << 1
TOKENIZE_ADD_BOS = 1 << 0
TOKENIZE_PARSE_SPECIAL = 1 << 1
DETOK_SKIP_SPECIAL = 1 << 0
CONTEXT_AUTO_PURGE = 1 << 0
CONTEXT_KV_DROP_LRU = 1 << 1
SUSPEND_KV = 1
SUSPEND_WEIGHTS = 2
DEVICE_HOST_MEMORY = 1 << 0

# ---------------------------------------------------------------------------
# Callback types
# ---------------------------------------------------------------------------

# void (*kiln_log_fn)(int32_t level, const char *msg, void *user)
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_char_p, ctypes.c_void_p)
# int32_t (*kiln_ubatch_fn)(kiln_context *, uint32_t ubatch_index,
#                           uint32_t n_tokens, uint32_t kv_len, void *user)
UBATCH_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_uint32,
                             ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)

# int32_t (*kiln_quantize_progress_fn)(uint64_t i, uint64_t n, const char *name,
#                                     int32_t type, void *user)
QUANTIZE_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_uint64, ctypes.c_uint64,
                                        ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p)

# ---------------------------------------------------------------------------
# Structs
# ---------------------------------------------------------------------------

_u8, _i8 = ctypes.c_uint8, ctypes.c_int8
_u32, _i32, _u64 = ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64
_f32, _ptr = ctypes.c_float, ctypes.c_void_p


class _Struct(ctypes.Structure):
    """Base of the mirrored structs: repr and as_dict for reading stats,
    char arrays shown as str."""

    _c_name_ = ""   # the C typedef this class mirrors
    _init_ = ""     # the exported kiln_*_init_sized that fills it

    @classmethod
    def new(cls):
        """An instance filled with the library's defaults (or zeros for
        outputs) through kiln_*_init_sized(p, sizeof)."""
        s = cls()
        getattr(lib, cls._init_)(ctypes.byref(s), ctypes.sizeof(cls))
        return s

    def as_dict(self):
        out = {}
        for name, _ in self._fields_:
            if name == "struct_size":
                continue
            v = getattr(self, name)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            out[name] = v
        return out

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % kv for kv in self.as_dict().items()))


class ModelParams(_Struct):
    _c_name_, _init_ = "kiln_model_params", "kiln_model_params_init_sized"
    _fields_ = [("struct_size", _u32), ("flags", _u32), ("backend", ctypes.c_char_p),
                ("device", _i32), ("log_level", _i32), ("log_fn", LOG_FN),
                ("log_user", _ptr), ("split", ctypes.c_char_p)]


class ModelInfo(_Struct):
    _c_name_, _init_ = "kiln_model_info", "kiln_model_info_init_sized"
    _fields_ = [("struct_size", _u32), ("arch", ctypes.c_char * 32),
                ("name", ctypes.c_char * 128), ("n_vocab", _u32), ("n_ctx_train", _u32),
                ("n_embd", _u32), ("n_layer", _u32), ("n_head", _u32), ("n_head_kv", _u32),
                ("n_ff", _u32), ("head_dim", _u32), ("n_params", _u64),
                ("size_bytes", _u64), ("bos", _i32), ("eos", _i32)]


class ContextParams(_Struct):
    _c_name_, _init_ = "kiln_context_params", "kiln_context_params_init_sized"
    _fields_ = [("struct_size", _u32), ("n_ctx", _u32), ("n_ubatch", _u32),
                ("n_seq_max", _u32), ("n_threads", _i32), ("kv_block_size", _u32),
                ("flags", _u32), ("log_level", _i32), ("log_fn", LOG_FN),
                ("log_user", _ptr), ("ubatch_cb", UBATCH_FN), ("ubatch_user", _ptr),
                ("pool_cap", _u64), ("kv_device_budget", _u64), ("kv_host_budget", _u64)]


class Batch(_Struct):
    _c_name_, _init_ = "kiln_batch", "kiln_batch_init_sized"
    _fields_ = [("struct_size", _u32), ("n_tokens", _u32),
                ("tokens", ctypes.POINTER(_i32)), ("pos", ctypes.POINTER(_i32)),
                ("seq_id", ctypes.POINTER(_i32)), ("logits", ctypes.POINTER(_i8))]


class PoolStats(_Struct):
    _c_name_, _init_ = "kiln_pool_stats", "kiln_pool_stats_init_sized"
    _fields_ = [("struct_size", _u32), ("bytes_in_use", _u64), ("bytes_cached", _u64),
                ("bytes_peak", _u64), ("cap", _u64), ("n_allocs", _u64), ("n_frees", _u64),
                ("n_device_allocs", _u64)]


class KvStats(_Struct):
    _c_name_, _init_ = "kiln_kv_stats", "kiln_kv_stats_init_sized"
    _fields_ = [("struct_size", _u32), ("block_size", _u32), ("n_blocks_total", _u32),
                ("n_blocks_used", _u32), ("n_blocks_free", _u32), ("n_blocks_shared", _u32),
                ("n_seq_max", _u32), ("n_seq", _u32), ("n_seq_offloaded", _u32),
                ("reserved", _u32), ("block_bytes", _u64), ("bytes_device", _u64),
                ("bytes_host", _u64), ("n_auto_offloads", _u64), ("n_auto_restores", _u64),
                ("n_dropped", _u64)]


class SamplerParams(_Struct):
    _c_name_, _init_ = "kiln_sampler_params", "kiln_sampler_params_init_sized"
    _fields_ = [("struct_size", _u32), ("temperature", _f32), ("top_k", _i32),
                ("top_p", _f32), ("min_p", _f32), ("repeat_penalty", _f32),
                ("freq_penalty", _f32), ("presence_penalty", _f32),
                ("penalty_last_n", _i32), ("seed", _u64)]


class DeviceInfo(_Struct):
    _c_name_, _init_ = "kiln_device_info", "kiln_device_info_init_sized"
    _fields_ = [("struct_size", _u32), ("name", ctypes.c_char * 128),
                ("backend", ctypes.c_char * 32), ("mem_total", _u64), ("mem_free", _u64),
                ("flags", _u32)]


class DraftParams(_Struct):
    _c_name_, _init_ = "kiln_draft_params", "kiln_draft_params_init_sized"
    _fields_ = [("struct_size", _u32), ("n_draft", _i32), ("n_ctx", _u32),
                ("n_threads", _i32), ("p_min", _f32)]


class DraftStats(_Struct):
    _c_name_, _init_ = "kiln_draft_stats", "kiln_draft_stats_init_sized"
    _fields_ = [("struct_size", _u32), ("n_proposed", _u64), ("n_accepted", _u64),
                ("n_target_batches", _u64), ("n_draft_batches", _u64)]


class MemoryEntry(_Struct):
    _c_name_, _init_ = "kiln_memory_entry", "kiln_memory_entry_init_sized"
    _fields_ = [("struct_size", _u32), ("space", _u32), ("backend", ctypes.c_char * 16),
                ("device", _i32), ("owner_kind", _u32), ("owner_id", _u64),
                ("owner_handle", _u64), ("purpose", _u32), ("flags", _u32),
                ("bytes", _u64), ("count", _u64), ("peak_bytes", _u64)]


class MemoryEvent(_Struct):
    _c_name_, _init_ = "kiln_memory_event", "kiln_memory_event_init_sized"
    _fields_ = [("struct_size", _u32), ("sign", _i32), ("seq", _u64), ("time_ns", _u64),
                ("size", _u64), ("bytes_live", _u64), ("space", _u32),
                ("backend", ctypes.c_char * 16), ("device", _i32), ("owner_kind", _u32),
                ("owner_id", _u64), ("purpose", _u32), ("line", _i32),
                ("file", ctypes.c_char_p)]


# void (*kiln_memory_fn)(const kiln_memory_event *ev, void *user)
MEMORY_FN = ctypes.CFUNCTYPE(None, ctypes.POINTER(MemoryEvent), ctypes.c_void_p)


class QuantizeParams(_Struct):
    _c_name_, _init_ = "kiln_quantize_params", "kiln_quantize_params_init_sized"
    _fields_ = [("struct_size", _u32), ("ftype", _i32), ("flags", _u32),
                ("n_threads", _i32), ("progress", QUANTIZE_PROGRESS_FN),
                ("progress_user", _ptr)]


STRUCTS = (ModelParams, ModelInfo, ContextParams, Batch, PoolStats, KvStats,
           SamplerParams, DeviceInfo, DraftParams, DraftStats, QuantizeParams,
           MemoryEntry, MemoryEvent)

# ---------------------------------------------------------------------------
# Prototypes. Handles are void pointers (opaque); a NULL handle is None.
# ---------------------------------------------------------------------------

_st = ctypes.c_int32              # kiln_status
_h = ctypes.c_void_p              # any handle
_hp = ctypes.POINTER(ctypes.c_void_p)
_sz = ctypes.c_size_t
_szp = ctypes.POINTER(ctypes.c_size_t)
_i32p = ctypes.POINTER(_i32)
_fp = ctypes.POINTER(_f32)
_cs = ctypes.c_char_p


def _p(t):
    return ctypes.POINTER(t)


_PROTOTYPES = {
    "kiln_status_str": (_cs, [_st]),
    "kiln_last_error": (_cs, []),
    "kiln_version": (_cs, []),
    "kiln_version_number": (_u32, []),
    "kiln_log_set_default": (None, [LOG_FN, _ptr, _i32]),
    # memory report (docs/memory.md "Finding where memory goes")
    "kiln_memory_entry_init_sized": (None, [_p(MemoryEntry), _u32]),
    "kiln_memory_event_init_sized": (None, [_p(MemoryEvent), _u32]),
    "kiln_memory_report_get": (_st, [_u32, _p(MemoryEntry), _sz, _u32, _szp]),
    "kiln_memory_report_str": (_st, [_u32, ctypes.c_void_p, _sz, _szp]),
    "kiln_memory_report": (_st, [ctypes.c_void_p, _u32]),
    "kiln_memory_purpose_str": (_cs, [_u32]),
    "kiln_memory_owner_str": (_cs, [_u32]),
    "kiln_memory_set_callback": (None, [MEMORY_FN, _ptr]),
    "kiln_memory_leak_count": (_u64, []),
    # model
    "kiln_model_params_init_sized": (None, [_p(ModelParams), _u32]),
    "kiln_model_load": (_st, [_cs, _p(ModelParams), _hp]),
    "kiln_model_free": (None, [_h]),
    "kiln_model_info_init_sized": (None, [_p(ModelInfo), _u32]),
    "kiln_model_get_info": (_st, [_h, _p(ModelInfo)]),
    "kiln_model_meta_str": (_st, [_h, _cs, ctypes.c_void_p, _sz, _szp]),
    # quantization
    "kiln_quantize_params_init_sized": (None, [_p(QuantizeParams), _u32]),
    "kiln_model_quantize": (_st, [_cs, _cs, _p(QuantizeParams)]),
    # tokenizer
    "kiln_tokenize": (_st, [_h, _cs, _sz, _u32, _i32p, _sz, _szp]),
    "kiln_detokenize": (_st, [_h, _i32p, _sz, _u32, ctypes.c_void_p, _sz, _szp]),
    "kiln_token_bos": (_i32, [_h]),
    "kiln_token_eos": (_i32, [_h]),
    "kiln_token_is_eog": (_i32, [_h, _i32]),
    "kiln_model_n_vocab": (_i32, [_h]),
    "kiln_detokenizer_create": (_st, [_h, _u32, _hp]),
    "kiln_detokenizer_free": (None, [_h]),
    "kiln_detokenizer_push": (_st, [_h, _i32, ctypes.c_void_p, _sz, _szp]),
    "kiln_detokenizer_flush": (_st, [_h, ctypes.c_void_p, _sz, _szp]),
    # context
    "kiln_context_params_init_sized": (None, [_p(ContextParams), _u32]),
    "kiln_context_create": (_st, [_h, _p(ContextParams), _hp]),
    "kiln_context_free": (None, [_h]),
    "kiln_context_last_error": (_cs, [_h]),
    "kiln_context_kv": (_h, [_h]),
    "kiln_batch_init_sized": (None, [_p(Batch), _u32]),
    "kiln_decode": (_st, [_h, _p(Batch)]),
    "kiln_context_logits": (_fp, [_h, _i32]),
    "kiln_pool_stats_init_sized": (None, [_p(PoolStats), _u32]),
    "kiln_context_pool_stats": (_st, [_h, _p(PoolStats)]),
    "kiln_context_pool_purge": (_st, [_h]),
    "kiln_context_pool_set_cap": (_st, [_h, _u64]),
    "kiln_context_suspend": (_st, [_h, _i32]),
    "kiln_context_resume": (_st, [_h]),
    "kiln_context_suspended": (_i32, [_h]),
    # KV cache
    "kiln_kv_clear": (_st, [_h]),
    "kiln_kv_seq_rm": (_st, [_h, _i32, _i32, _i32]),
    "kiln_kv_seq_pos_max": (_i32, [_h, _i32]),
    "kiln_kv_seq_cp": (_st, [_h, _i32, _i32]),
    "kiln_kv_seq_keep": (_st, [_h, _i32]),
    "kiln_kv_seq_export": (_st, [_h, _i32, ctypes.c_void_p, _sz, _szp]),
    "kiln_kv_seq_import": (_st, [_h, _i32, ctypes.c_void_p, _sz]),
    "kiln_kv_seq_save": (_st, [_h, _i32, _cs]),
    "kiln_kv_seq_load": (_st, [_h, _i32, _cs]),
    "kiln_kv_seq_offload": (_st, [_h, _i32]),
    "kiln_kv_seq_restore": (_st, [_h, _i32]),
    "kiln_kv_stats_init_sized": (None, [_p(KvStats), _u32]),
    "kiln_kv_get_stats": (_st, [_h, _p(KvStats)]),
    # sampling
    "kiln_sampler_params_init_sized": (None, [_p(SamplerParams), _u32]),
    "kiln_sampler_create": (_st, [_p(SamplerParams), _hp]),
    "kiln_sampler_free": (None, [_h]),
    "kiln_sampler_sample": (_st, [_h, _fp, _i32, _i32p]),
    "kiln_sampler_accept": (_st, [_h, _i32]),
    "kiln_sampler_reset": (None, [_h, _u64]),
    # devices
    "kiln_device_info_init_sized": (None, [_p(DeviceInfo), _u32]),
    "kiln_backend_device_count": (_i32, [_cs]),
    "kiln_backend_device_info": (_st, [_cs, _i32, _p(DeviceInfo)]),
    # speculative decoding
    "kiln_draft_params_init_sized": (None, [_p(DraftParams), _u32]),
    "kiln_draft_create": (_st, [_h, _h, _p(DraftParams), _hp]),
    "kiln_draft_free": (None, [_h]),
    "kiln_draft_generate": (_st, [_h, _i32p, _sz, _i32, _h, _i32p, _sz, _szp]),
    "kiln_draft_prefill": (_st, [_h, _i32p, _sz]),
    "kiln_draft_reset": (_st, [_h]),
    "kiln_draft_propose": (_st, [_h, _i32, _i32p, _i32, _i32p]),
    "kiln_draft_verify": (_st, [_h, _i32, _i32p, _i32, _h, _i32p, _i32p]),
    "kiln_draft_accept": (_st, [_h, _i32]),
    "kiln_draft_stats_init_sized": (None, [_p(DraftStats), _u32]),
    "kiln_draft_get_stats": (_st, [_h, _p(DraftStats)]),
}


def _bind():
    missing = []
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name, None)
        if fn is None:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise ImportError("kiln: %s lacks %s (an older libkiln?)"
                          % (library_path, ", ".join(missing)))


_bind()


def cstr(s):
    """str/bytes/PathLike -> bytes for a const char * argument (None stays)."""
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    return os.fsencode(s)


def int32_array(values):
    """A ctypes int32 array holding `values` (any iterable of ints)."""
    values = list(values)
    return (_i32 * len(values))(*values)

