"""kiln.Draft: speculative decoding with a small draft model
(kiln_draft_*). The draft proposes tokens greedily on a context of its
own; the target context verifies them in one batch. The output is exactly
what plain decoding on the target gives with the same sampler.

Ownership: a Draft owns its C draft and holds its target Context and
draft Model. Closing the target first detaches the draft in C (its calls
then raise InvalidArgumentError); Draft.close() is still safe and
idempotent, before or after the target's, and runs on garbage collection.
A target has at most one draft at a time.

Thread-safety: a draft is used together with its target, from one thread.
"""

import ctypes

from . import _lib
from .errors import check, closed, error
from .model import Detokenizer

_lib_ = _lib.lib


class Draft:
    """Draft(target, draft_model, n_draft=None, n_ctx=None, n_threads=None,
    p_min=None) - None keeps the library default (8 tokens per proposal,
    the target's n_ctx and threads, p_min 0)."""

    def __init__(self, target, draft_model, n_draft=None, n_ctx=None, n_threads=None,
                 p_min=None):
        self._h = None
        self.target = target
        self.draft_model = draft_model
        p = _lib.DraftParams.new()
        for name, v in (("n_draft", n_draft), ("n_ctx", n_ctx), ("n_threads", n_threads)):
            if v is not None:
                setattr(p, name, int(v))
        if p_min is not None:
            p.p_min = float(p_min)
        self.params = p
        h = ctypes.c_void_p()
        check(_lib_.kiln_draft_create(target.handle, draft_model.handle, ctypes.byref(p),
                                      ctypes.byref(h)))
        self._h = h.value

    @property
    def handle(self):
        if not self._h:
            raise closed("Draft")
        return self._h

    def close(self):
        h, self._h = self._h, None
        if h:
            _lib_.kiln_draft_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check(self, st):
        # the target's ubatch callback runs in verify/generate: an exception
        # it caught becomes the __cause__, as in Context.decode
        return self.target._raise_status(st)

    def _prompt(self, prompt, add_bos):
        return self.target._prompt_tokens(prompt, add_bos, False)

    # -- one call ----------------------------------------------------------

    def generate_all(self, prompt, max_tokens=128, sampler=None, add_bos=True):
        """kiln_draft_generate: the generated token ids (a list) for a
        prompt (str/bytes or ids) on sequence 0 of the target (emptied
        first). sampler None: greedy. The prompt is not fed to the sampler
        (call sampler.accept for it first if penalties should see it)."""
        toks = self._prompt(prompt, add_bos)
        if max_tokens < 1:
            raise error(_lib.E_INVALID_ARG, "Draft.generate_all: max_tokens must be >= 1")
        arr = _lib.int32_array(toks)
        out = (ctypes.c_int32 * max_tokens)()
        n = ctypes.c_size_t()
        smp = sampler.handle if sampler is not None else None
        self.target._cb_exc = None
        self._check(_lib_.kiln_draft_generate(self.handle, arr, len(arr), int(max_tokens), smp,
                                              out, max_tokens, ctypes.byref(n)))
        return list(out[:n.value])

    # -- streaming, through the lower-level steps --------------------------

    def generate_tokens(self, prompt, max_tokens=128, sampler=None, add_bos=True):
        """Yields the token ids kiln_draft_generate would return, as each
        verification accepts them (propose -> verify loop on sequence 0,
        which is emptied first on both caches). sampler None: greedy. The
        target's stop_reason is set as Context.generate_tokens does."""
        target, model = self.target, self.target.model
        h = self.handle
        toks = self._prompt(prompt, add_bos)
        target._cb_exc = None
        target.stop_reason = None
        target.kv.seq_rm(0)
        self._check(_lib_.kiln_draft_reset(h))
        history, last = toks[:-1], toks[-1]
        if history:  # invariant: history in both caches, `last` in neither
            target.decode(history)
            arr = _lib.int32_array(history)
            self._check(_lib_.kiln_draft_prefill(h, arr, len(arr)))
        n_max = max(1, int(self.params.n_draft))
        proposal = (ctypes.c_int32 * n_max)()
        n_prop, n_acc, nxt = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
        smp = sampler.handle if sampler is not None else None
        n = 0
        while True:
            if 0 <= max_tokens <= n:
                target.stop_reason = "length"
                return
            want = n_max if max_tokens < 0 else min(n_max, max_tokens - n - 1)
            self._check(_lib_.kiln_draft_propose(h, last, proposal, want, ctypes.byref(n_prop)))
            self._check(_lib_.kiln_draft_verify(h, last, proposal, n_prop.value, smp,
                                                ctypes.byref(n_acc), ctypes.byref(nxt)))
            for tok in list(proposal[:n_acc.value]) + [nxt.value]:
                if model.is_eog(tok):
                    target.stop_reason = "eog"
                    return
                n += 1
                yield tok
                if 0 <= max_tokens <= n:
                    target.stop_reason = "length"
                    return
            last = nxt.value

    def generate(self, prompt, max_tokens=128, sampler=None, add_bos=True, skip_special=False):
        """generate_tokens() as text pieces (str), like Context.generate."""
        with Detokenizer(self.target.model, skip_special) as d:
            for tok in self.generate_tokens(prompt, max_tokens, sampler, add_bos):
                piece = d.push(tok)
                if piece:
                    yield piece
            tail = d.flush()
            if tail:
                yield tail

    def stats(self):
        """kiln_draft_get_stats: a DraftStats (proposed, accepted, batches);
        works on a detached draft."""
        s = _lib.DraftStats.new()
        check(_lib_.kiln_draft_get_stats(self.handle, ctypes.byref(s)))
        return s

