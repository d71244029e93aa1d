"""kiln.Context (KV cache + compute state: decoding, logits, generation,
pool statistics, suspend/resume), kiln.KV (a context's KV cache) and
kiln.Batch (a builder for multi-sequence batches).

Ownership: a Context owns its C context and holds the Model it was created
from (the C context holds its own model reference too), so closing or
collecting the Model first is safe. close() is idempotent and also run by
`with` and by garbage collection; the Python ubatch and log callbacks are
kept alive until the C context is freed.

Thread-safety: as in C, one context (with its KV and draft) must not be
used from two threads at once. ctypes releases the GIL during each call.

The ubatch callback: fn(ctx, ubatch_index, n_tokens, kv_len) runs after
every ubatch of a decode, on the decoding thread; a truthy return cancels
the decode (CancelledError, the KV cache as before the call). An exception
raised in fn never unwinds into C: it cancels the decode, and decode()
raises CancelledError with that exception as __cause__ (KeyboardInterrupt
and SystemExit are re-raised as themselves). Inside fn only
ctx.pool_stats(), ctx.pool_purge(), ctx.pool_set_cap() and
ctx.kv.seq_pos_max() are allowed (include/kiln.h).
"""

import array
import ctypes
import weakref

from . import _lib
from .errors import CancelledError, ContextFullError, check, closed, error, last_error
from .model import Detokenizer, _log_trampoline
from .sampling import Sampler

_lib_ = _lib.lib
_FLOAT_SIZE = ctypes.sizeof(ctypes.c_float)


class Batch:
    """Tokens of one or more sequences for Context.decode():

        b = kiln.Batch()
        b.add(tok, seq_id=0)                 # continues sequence 0
        b.add(tok2, seq_id=1, logits=True)   # want this token's logits

    pos: give every token's position or none (each token then continues
    its sequence). logits: tokens whose logits are wanted; if none is
    marked, only the last token's are kept (kiln_decode's default)."""

    def __init__(self):
        self.tokens, self.seq_ids, self.pos, self.logits = [], [], [], []

    def add(self, token, seq_id=0, pos=None, logits=False):
        self.tokens.append(int(token))
        self.seq_ids.append(int(seq_id))
        self.pos.append(pos)
        self.logits.append(bool(logits))
        return self

    def __len__(self):
        return len(self.tokens)

    def clear(self):
        self.__init__()


class KV:
    """A context's KV cache (kiln_kv_*), from Context.kv. Borrowed from its
    Context (and keeps it alive): every call raises once the context is
    closed. Sequence ids are ints in [0, n_seq_max)."""

    def __init__(self, ctx):
        self._ctx = ctx

    @property
    def handle(self):
        return self._ctx._kv_handle()

    def _check(self, st):
        return check(st, self._ctx._h)

    def clear(self):
        """Removes every cell of every sequence."""
        self._check(_lib_.kiln_kv_clear(self.handle))

    def seq_rm(self, seq, p0=0, p1=-1):
        """Removes positions [p0, p1) of seq (p1 < 0: to the end; seq < 0:
        every sequence). A middle range shifts the tail (see kiln.h)."""
        self._check(_lib_.kiln_kv_seq_rm(self.handle, int(seq), int(p0), int(p1)))

    def seq_pos_max(self, seq):
        """Highest position stored for seq, -1 if empty."""
        return _lib_.kiln_kv_seq_pos_max(self.handle, int(seq))

    def seq_len(self, seq):
        return self.seq_pos_max(seq) + 1

    def seq_cp(self, src, dst):
        """Makes dst a copy of src (shared blocks, copy-on-write)."""
        self._check(_lib_.kiln_kv_seq_cp(self.handle, int(src), int(dst)))

    def seq_keep(self, seq):
        """Removes every sequence except seq."""
        self._check(_lib_.kiln_kv_seq_keep(self.handle, int(seq)))

    def seq_export(self, seq):
        """The serialized state of sequence seq as bytes (kiln_kv_seq_export)."""
        h = self.handle
        n = ctypes.c_size_t()
        for _ in range(3):
            self._check(_lib_.kiln_kv_seq_export(h, int(seq), None, 0, ctypes.byref(n)))
            buf = ctypes.create_string_buffer(max(n.value, 1))
            st = _lib_.kiln_kv_seq_export(h, int(seq), buf, n.value, ctypes.byref(n))
            if st != _lib.E_BUFFER_TOO_SMALL:
                self._check(st)
                return buf.raw[:n.value]
        raise error(_lib.E_INTERNAL, "kiln_kv_seq_export: size keeps changing")

    def seq_import(self, seq, data):
        """Replaces sequence seq with exported state (bytes-like). Validated
        first: FormatError / IncompatibleError / ContextFullError leave the
        cache unchanged."""
        data = bytes(data)
        self._check(_lib_.kiln_kv_seq_import(self.handle, int(seq), data, len(data)))

    def seq_save(self, seq, path):
        """Exports seq to a file (written to path.tmp, then renamed)."""
        self._check(_lib_.kiln_kv_seq_save(self.handle, int(seq), _lib.cstr(path)))

    def seq_load(self, seq, path):
        """Imports seq from a file written by seq_save."""
        self._check(_lib_.kiln_kv_seq_load(self.handle, int(seq), _lib.cstr(path)))

    def seq_offload(self, seq):
        """Moves seq's rows to host memory and frees its device blocks."""
        self._check(_lib_.kiln_kv_seq_offload(self.handle, int(seq)))

    def seq_restore(self, seq):
        """Brings an offloaded seq back onto device blocks."""
        self._check(_lib_.kiln_kv_seq_restore(self.handle, int(seq)))

    def stats(self):
        """kiln_kv_get_stats: a KvStats (blocks, sequences, bytes, ...)."""
        s = _lib.KvStats.new()
        self._check(_lib_.kiln_kv_get_stats(self.handle, ctypes.byref(s)))
        return s


def _ubatch_trampoline(ctx):
    """The UBATCH_FN of a context. Holds it weakly (no reference cycle
    keeps a context alive); catches everything (see the module doc)."""
    ref = weakref.ref(ctx)

    def tramp(ctx_ptr, ubatch_index, n_tokens, kv_len, user):
        try:
            self = ref()
            fn = self._ubatch_fn if self is not None else None
            if fn is None:
                return 0
            return 1 if fn(self, int(ubatch_index), int(n_tokens), int(kv_len)) else 0
        except BaseException as e:  # noqa: B902 - nothing may unwind into C
            try:
                self = ref()
                if self is not None:
                    self._cb_exc = e
            except BaseException:
                pass
            return 1

    return _lib.UBATCH_FN(tramp)


class Context:
    """A context on a Model (kiln_context_create).

    Context(model, n_ctx=None, n_ubatch=None, n_seq_max=None, n_threads=None,
            kv_block_size=None, auto_purge=False, kv_drop_lru=False,
            pool_cap=None, kv_device_budget=None, kv_host_budget=None,
            ubatch_callback=None, log=None, log_level=None, params=None)

    None keeps the library default (kiln_context_params_init). params: a
    ContextParams to start from instead of the defaults.
    """

    def __init__(self, model, n_ctx=None, n_ubatch=None, n_seq_max=None, n_threads=None,
                 kv_block_size=None, auto_purge=False, kv_drop_lru=False, pool_cap=None,
                 kv_device_budget=None, kv_host_budget=None, ubatch_callback=None,
                 log=None, log_level=None, params=None):
        self._h = None
        self.model = model
        self._cb_exc = None
        self.stop_reason = None
        p = params if params is not None else _lib.ContextParams.new()
        for name, v in (("n_ctx", n_ctx), ("n_ubatch", n_ubatch), ("n_seq_max", n_seq_max),
                        ("n_threads", n_threads), ("kv_block_size", kv_block_size),
                        ("log_level", log_level), ("pool_cap", pool_cap),
                        ("kv_device_budget", kv_device_budget),
                        ("kv_host_budget", kv_host_budget)):
            if v is not None:
                setattr(p, name, int(v))
        if auto_purge:
            p.flags |= _lib.CONTEXT_AUTO_PURGE
        if kv_drop_lru:
            p.flags |= _lib.CONTEXT_KV_DROP_LRU
        # Both trampolines live as long as this object, which frees the C
        # context before it can go away.
        self._log_cb = None
        if log is not None:
            self._log_cb = _log_trampoline(log)
            p.log_fn = self._log_cb
        self._ubatch_fn = ubatch_callback
        self._ubatch_cb = None
        if ubatch_callback is not None:
            self._ubatch_cb = _ubatch_trampoline(self)
            p.ubatch_cb = self._ubatch_cb
        self.params = p
        h = ctypes.c_void_p()
        check(_lib_.kiln_context_create(model.handle, ctypes.byref(p), ctypes.byref(h)))
        self._h = h.value
        self._n_vocab = model.n_vocab
        self._batch = _lib.Batch.new()

    @property
    def kv(self):
        """The context's KV cache (a KV; a new small view each time, so that
        the context holds no reference cycle and is freed by refcounting)."""
        return KV(self)

    # -- lifetime ----------------------------------------------------------

    def close(self):
        """Frees the context (its KV cache, compute buffers, and the context
        of a draft attached to it). Idempotent."""
        h, self._h = self._h, None
        if h:
            _lib_.kiln_context_free(h)

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
        if not self._h:
            raise closed("Context")
        return self._h

    def _kv_handle(self):
        return _lib_.kiln_context_kv(self.handle)

    @property
    def ubatch_callback(self):
        return self._ubatch_fn

    @ubatch_callback.setter
    def ubatch_callback(self, fn):
        """Replaces the callback; only possible on a context created with
        one (the C callback is fixed at creation)."""
        if self._ubatch_cb is None and fn is not None:
            raise error(_lib.E_INVALID_ARG,
                        "Context: pass ubatch_callback at creation to install one")
        self._ubatch_fn = fn

    def last_error(self):
        """kiln_context_last_error(): the last failure on this context."""
        return (_lib_.kiln_context_last_error(self.handle) or b"").decode("utf-8", "replace")

    # -- decoding ----------------------------------------------------------

    def decode(self, tokens, seq_id=None, pos=None, logits=None):
        """kiln_decode. tokens: a Batch, or a sequence of token ids with
        seq_id (an int for all tokens, or one per token; default 0), pos
        (None: continue each sequence, or one position per token) and logits
        (None: only the last token's; True: every token's; or one bool per
        token). Raises ContextFullError (cache unchanged), CancelledError
        (the ubatch callback), ..."""
        if isinstance(tokens, Batch):
            b = tokens
            if any(p is not None for p in b.pos):
                if any(p is None for p in b.pos):
                    raise error(_lib.E_INVALID_ARG, "Batch: give every position or none")
                pos = b.pos
            tokens, seq_id = b.tokens, b.seq_ids
            logits = b.logits if any(b.logits) else None
        tokens = list(tokens)
        n = len(tokens)
        h = self.handle
        cb = self._batch
        cb.n_tokens = n
        keep = [_lib.int32_array(tokens)]
        cb.tokens = keep[0]
        cb.seq_id = cb.pos = None
        cb.logits = None
        if seq_id is not None:
            if isinstance(seq_id, int):
                seq_id = [seq_id] * n if seq_id else None
            if seq_id is not None:
                if len(seq_id) != n:
                    raise error(_lib.E_INVALID_ARG, "decode: %d seq ids for %d tokens"
                                % (len(seq_id), n))
                keep.append(_lib.int32_array(seq_id))
                cb.seq_id = keep[-1]
        if pos is not None:
            if len(pos) != n:
                raise error(_lib.E_INVALID_ARG, "decode: %d positions for %d tokens"
                            % (len(pos), n))
            keep.append(_lib.int32_array(pos))
            cb.pos = keep[-1]
        if logits is not None:
            flags = [1] * n if logits is True else [1 if x else 0 for x in logits]
            if len(flags) != n:
                raise error(_lib.E_INVALID_ARG, "decode: %d logits flags for %d tokens"
                            % (len(flags), n))
            keep.append((ctypes.c_int8 * n)(*flags))
            cb.logits = keep[-1]
        self._cb_exc = None
        st = _lib_.kiln_decode(h, ctypes.byref(cb))
        self._raise_status(st)

    def _raise_status(self, st):
        """check() for calls that run the ubatch callback: an exception it
        caught becomes the __cause__ of the CancelledError."""
        exc, self._cb_exc = self._cb_exc, None
        if st >= 0:
            return st
        msg = last_error(self._h)
        if exc is not None and st == _lib.E_CANCELLED:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise exc
            raise CancelledError(st, "%s (the ubatch callback raised %s: %s)"
                                 % (msg, type(exc).__name__, exc)) from exc
        raise error(st, msg)

    def _logits_ptr(self, i):
        ptr = _lib_.kiln_context_logits(self.handle, int(i))
        if not ptr:
            raise error(_lib.E_INVALID_ARG, "no logits for token %d of the last batch" % i)
        return ptr

    def logits(self, i=-1):
        """A copy (array.array('f'), n_vocab floats) of the logits of token
        i of the last decoded batch (i < 0 counts from the end); None if
        they were not requested."""
        ptr = _lib_.kiln_context_logits(self.handle, int(i))
        if not ptr:
            return None
        out = array.array("f")
        out.frombytes(ctypes.string_at(ptr, self._n_vocab * _FLOAT_SIZE))
        return out

    def sample(self, sampler, i=-1):
        """sampler.sample() on token i's logits, without copying them."""
        return sampler._sample_ptr(self._logits_ptr(i), self._n_vocab)

    # -- generation --------------------------------------------------------

    def _prompt_tokens(self, prompt, add_bos, parse_special):
        if isinstance(prompt, (str, bytes)):
            toks = self.model.tokenize(prompt, add_bos=add_bos, parse_special=parse_special)
        else:
            toks = [int(t) for t in prompt]
        if not toks:  # nothing to condition on: start from BOS
            bos = self.model.bos
            if bos < 0:
                raise error(_lib.E_INVALID_ARG, "empty prompt and the model has no BOS")
            toks = [bos]
        return toks

    def generate_tokens(self, prompt, max_tokens=128, sampler=None, seq=0, add_bos=True,
                        parse_special=False, reset=True, **sampler_kw):
        """Yields generated token ids, as examples/kiln-run does: tokenize
        the prompt (str/bytes, or a list of ids used as is), decode it into
        sequence `seq` (emptied first unless reset=False), then sample,
        yield, decode one token at a time. Stops after max_tokens (< 0: no
        limit), at an end-of-generation token (not yielded) or when the
        cache is full; self.stop_reason says which ("length", "eog",
        "context_full"). sampler: a Sampler (the prompt tokens are accepted
        into it), else one is made from the keywords (Sampler's)."""
        own = sampler is None
        if own:
            sampler = Sampler(**sampler_kw)
        elif sampler_kw:
            raise TypeError("give either sampler or sampler keywords")
        try:
            self.stop_reason = None
            toks = self._prompt_tokens(prompt, add_bos, parse_special)
            if reset:
                self.kv.seq_rm(seq)
            for t in toks:
                sampler.accept(t)
            self.decode(toks, seq_id=seq)
            model, n = self.model, 0
            while True:
                if 0 <= max_tokens <= n:
                    self.stop_reason = "length"
                    return
                tok = self.sample(sampler)
                if model.is_eog(tok):
                    self.stop_reason = "eog"
                    return
                n += 1
                yield tok
                if 0 <= max_tokens <= n:  # no need to decode it
                    self.stop_reason = "length"
                    return
                try:
                    self.decode([tok], seq_id=seq)
                except ContextFullError:
                    self.stop_reason = "context_full"
                    return
        finally:
            if own:
                sampler.close()

    def generate(self, prompt, max_tokens=128, sampler=None, skip_special=False, **kw):
        """Like generate_tokens() but yields text pieces (str) as they
        complete (a streaming detokenizer holds back split characters).
        "".join(ctx.generate(p, ...)) is the text kiln-run prints after the
        prompt."""
        with Detokenizer(self.model, skip_special) as d:
            for tok in self.generate_tokens(prompt, max_tokens, sampler, **kw):
                piece = d.push(tok)
                if piece:
                    yield piece
            tail = d.flush()
            if tail:
                yield tail

    # -- memory: pool, suspend ---------------------------------------------

    def pool_stats(self):
        """kiln_context_pool_stats: a PoolStats (bytes in use/cached/peak,
        cap, allocation counts). Allowed inside the ubatch callback."""
        s = _lib.PoolStats.new()
        check(_lib_.kiln_context_pool_stats(self.handle, ctypes.byref(s)), self._h)
        return s

    def pool_purge(self):
        """Frees every cached pool buffer. Allowed inside the callback."""
        check(_lib_.kiln_context_pool_purge(self.handle), self._h)

    def pool_set_cap(self, nbytes):
        """Caps the pool's cached bytes (0: unlimited) and trims at once."""
        check(_lib_.kiln_context_pool_set_cap(self.handle, int(nbytes)), self._h)

    def suspend(self, level=_lib.SUSPEND_KV):
        """Releases device memory, keeping state: level 1 (SUSPEND_KV) the
        KV cache to host memory, 2 (SUSPEND_WEIGHTS) also the weights."""
        check(_lib_.kiln_context_suspend(self.handle, int(level)), self._h)

    def resume(self):
        """Brings a suspended context back (decode also does it)."""
        check(_lib_.kiln_context_resume(self.handle), self._h)

    @property
    def suspended(self):
        """The suspend level: 0 active, 1 or 2."""
        return _lib_.kiln_context_suspended(self.handle)
