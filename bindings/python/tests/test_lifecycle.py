"""The memory lifecycle through the binding (offload/restore, suspend/
resume, pool purge and cap, export/import, save/load), errors as
exceptions (a corrupt file), the ubatch callback (cancel, and an exception
inside it), the log callback, and handle lifetimes (close idempotent, any
close or collection order)."""

import gc
import os
import weakref

import pytest

import kiln

from conftest import THREADS, load

PROMPT = "In the beginning God created the heaven and the earth."


def greedy_after(ctx, seq, n=8):
    """n greedy tokens continuing sequence seq (decodes them)."""
    out = []
    with kiln.Sampler(temperature=0) as g:
        for _ in range(n):
            t = ctx.sample(g)
            out.append(t)
            ctx.decode([t], seq_id=seq)
    return out


def test_lifecycle_cycle(target, tmp_path):
    toks = target.tokenize(PROMPT)
    with kiln.Context(target, n_ctx=1024, n_seq_max=4, n_threads=THREADS) as c:
        c.decode(toks)
        base_logits = c.logits()
        want = greedy_after(c, 0)
        c.kv.seq_rm(0, len(toks))  # back to the prompt

        # fresh prompt in seq 1; export it, offload it, restore it
        c.kv.clear()
        c.decode(toks, seq_id=1)
        state = c.kv.seq_export(1)
        assert isinstance(state, bytes) and len(state) > 0
        c.kv.seq_offload(1)
        st = c.kv.stats()
        assert st.n_seq_offloaded == 1 and st.bytes_host > 0
        c.kv.seq_restore(1)
        assert c.kv.stats().n_seq_offloaded == 0
        assert c.kv.seq_export(1) == state

        # suspend (KV to host) and resume: same continuation
        c.suspend(kiln.SUSPEND_KV)
        assert c.suspended == 1
        assert c.kv.stats().bytes_device == 0
        c.resume()
        assert c.suspended == 0
        assert c.logits() == base_logits  # the last logits survive
        assert greedy_after(c, 1) == want

        # import the exported state into seq 2, save/load into seq 3
        c.kv.seq_import(2, bytearray(state))
        assert c.kv.seq_len(2) == len(toks)
        path = tmp_path / "seq.kv"
        c.kv.seq_save(2, path)
        c.kv.seq_load(3, str(path))
        c.kv.seq_cp(3, 0)
        assert c.kv.stats().n_blocks_shared > 0
        c.kv.seq_keep(0)
        assert [c.kv.seq_len(s) for s in range(4)] == [len(toks), 0, 0, 0]

        # pool: purge empties the cache, a cap holds
        ps = c.pool_stats()
        assert ps.n_allocs >= ps.n_frees and ps.bytes_peak > 0
        c.pool_purge()
        assert c.pool_stats().bytes_cached == 0
        c.pool_set_cap(4096)
        assert c.pool_stats().cap == 4096
        # and the sequence still continues as it did originally
        c.kv.seq_rm(0, len(toks) - 1)
        c.decode(toks[-1:], seq_id=0)
        assert greedy_after(c, 0) == want

        # suspend at level 2, a decode resumes by itself
        c.suspend(kiln.SUSPEND_WEIGHTS)
        assert c.suspended == 2
        c.kv.seq_rm(0, len(toks) - 1)
        c.decode(toks[-1:], seq_id=0)
        assert c.suspended == 0

        # bad state is rejected, the cache unchanged
        with pytest.raises(kiln.FormatError):
            c.kv.seq_import(1, state[:len(state) // 2])
        with pytest.raises(kiln.KilnIOError):
            c.kv.seq_load(1, tmp_path / "missing.kv")
        assert c.kv.seq_len(1) == 0


def test_corrupt_file_raises(tmp_path, target_path):
    bad = tmp_path / "corrupt.gguf"
    with open(target_path, "rb") as f:
        head = f.read(4096)
    bad.write_bytes(head[:64] + b"\xff" * 64)  # header, then garbage
    with pytest.raises(kiln.KilnError) as e:
        kiln.Model(bad)
    assert isinstance(e.value, (kiln.FormatError, kiln.KilnIOError))
    assert e.value.status in (-3, -2)
    assert e.value.message  # what and where
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(kiln.FormatError) as e:
        kiln.Model(str(bad))
    assert e.value.status == -3 and e.value.name == "KILN_E_FORMAT"
    assert kiln.status_str(-3) == e.value.reason
    with pytest.raises(kiln.KilnIOError):
        kiln.Model(tmp_path / "missing.gguf")


def test_ubatch_callback_cancel_and_exception(target):
    toks = target.tokenize(PROMPT * 4)
    calls = []

    def cb(ctx, index, n_tokens, kv_len):
        calls.append((index, n_tokens, kv_len))
        ctx.pool_stats()  # allowed inside the callback
        return mode == "cancel" and index == 1

    with kiln.Context(target, n_ctx=1024, n_ubatch=16, n_threads=THREADS,
                      ubatch_callback=cb) as c:
        mode = "go"
        c.decode(toks)
        assert len(calls) == (len(toks) + 15) // 16
        assert calls[0] == (0, 16, 16)
        n_ok = c.kv.seq_len(0)
        c.kv.clear()

        mode, calls[:] = "cancel", []
        with pytest.raises(kiln.CancelledError) as e:
            c.decode(toks)
        assert e.value.status == -10 and len(calls) == 2
        assert c.kv.seq_len(0) == 0  # as before the call

        def boom(ctx, index, n_tokens, kv_len):
            if index == 2:
                raise ValueError("boom")
        c.ubatch_callback = boom
        with pytest.raises(kiln.CancelledError) as e:
            c.decode(toks)
        assert isinstance(e.value.__cause__, ValueError)
        assert "boom" in str(e.value)
        assert c.kv.seq_len(0) == 0

        def busy(ctx, index, n_tokens, kv_len):
            ctx.decode([1])  # BusyError inside: becomes a cancel
        c.ubatch_callback = busy
        with pytest.raises(kiln.CancelledError) as e:
            c.decode(toks)
        assert isinstance(e.value.__cause__, kiln.BusyError)

        c.ubatch_callback = None
        c.decode(toks)
        assert c.kv.seq_len(0) == n_ok
    with kiln.Context(target, n_ctx=64, n_threads=THREADS) as c:
        with pytest.raises(kiln.InvalidArgumentError):
            c.ubatch_callback = cb


def test_ubatch_exception_in_draft_verify(target, draft_model):
    def cb(ctx, index, n_tokens, kv_len):
        if n_tokens > 1 and kv_len > 20:
            raise RuntimeError("stop verifying")
    with kiln.Context(target, n_ctx=256, n_threads=THREADS, ubatch_callback=cb) as c, \
            kiln.Draft(c, draft_model, n_draft=4) as d:
        for gen in (lambda: d.generate_all(PROMPT, 40), lambda: list(d.generate_tokens(PROMPT, 40))):
            with pytest.raises(kiln.CancelledError) as e:
                gen()
            assert isinstance(e.value.__cause__, RuntimeError)


def test_log_callback(target_path, tmp_path):
    seen = []
    with load(target_path, log=lambda lvl, msg: seen.append((lvl, msg)),
                    log_level=kiln.LOG_INFO) as m:
        assert any("loaded" in msg for _, msg in seen)
        assert all(lvl <= kiln.LOG_INFO for lvl, _ in seen)
        with kiln.Context(m, n_ctx=64, n_threads=1) as c:
            c.decode(m.tokenize("x"))
    default = []
    kiln.set_log_handler(lambda lvl, msg: default.append(msg), kiln.LOG_ERROR)
    try:
        with pytest.raises(kiln.KilnError):
            kiln.Model(tmp_path / "missing.gguf")
        # a failing sink cannot break kiln
        kiln.set_log_handler(lambda lvl, msg: 1 / 0, kiln.LOG_ERROR)
        with pytest.raises(kiln.KilnIOError):
            kiln.Model(tmp_path / "missing.gguf")
    finally:
        kiln.set_log_handler(None)


def test_lifetimes_any_order(target_path, draft_path):
    for order in range(4):
        m = load(target_path)
        dm = load(draft_path)
        c = kiln.Context(m, n_ctx=128, n_threads=THREADS)
        d = kiln.Draft(c, dm, n_draft=2)
        det = m.detokenizer()
        s = kiln.Sampler()
        if order == 0:    # models first: contexts keep them alive in C
            m.close(); dm.close()
            c.decode([0, 100, 200])
            assert d.generate_all([0, 5], max_tokens=2)
            with pytest.raises(kiln.InvalidArgumentError):
                m.tokenize("x")
            assert det.push(100) is not None
            c.close(); d.close(); det.close(); s.close()
        elif order == 1:  # target before its draft
            c.close(); d.close(); m.close(); dm.close(); det.close(); s.close()
        elif order == 2:  # no explicit close at all: garbage collection
            del m, dm, c, d, det, s
            gc.collect()
        else:             # a reference cycle of everything, collected by gc
            box = [m, dm, c, d, det, s]
            box.append(box)
            c.box = box
            del m, dm, c, d, det, s, box
            gc.collect()
    # no reference cycles: dropping the last reference frees at once
    gc.disable()
    try:
        m = load(target_path)
        c = kiln.Context(m, n_ctx=64, n_threads=1, ubatch_callback=lambda *a: 0,
                         log=lambda lvl, msg: None)
        c.decode([0, 1])
        d = kiln.Draft(c, m)
        refs = [weakref.ref(o) for o in (m, c, d, c.kv)]
        del m, c, d
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()
    m = load(target_path)
    m.close(); m.close()
    assert m.closed
    with pytest.raises(kiln.InvalidArgumentError):
        kiln.Context(m)
    with load(target_path) as m2, kiln.Context(m2, n_ctx=64, n_threads=1) as c2:
        kv = c2.kv
    with pytest.raises(kiln.InvalidArgumentError):
        kv.stats()
    assert os.path.exists(target_path)
