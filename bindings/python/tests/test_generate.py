"""Tokenizer, decode (batch API), sampling and generation through the
binding: greedy text equal to examples/kiln-run's, the streaming
detokenizer, multi-sequence batches, speculative decoding."""

import os
import subprocess

import pytest

import kiln

from conftest import BACKEND, BUILD, THREADS

PROMPT = "In the beginning"
GREEDY = ("In the beginning of the year, in the day that the king of Egypt had made known "
          "to all the people that came out of Egypt,")


def test_greedy_text_equals_kiln_run(target_path, ctx):
    exe = os.path.join(BUILD, "bin", "kiln-run")
    if not os.path.exists(exe):
        pytest.skip("%s not built" % exe)
    run = subprocess.run([exe, "-m", target_path, "-p", PROMPT, "-n", "40", "--temp", "0",
                          "-t", str(THREADS)] + (["--backend", BACKEND] if BACKEND else []),
                         capture_output=True, check=True)
    want = run.stdout.decode("utf-8")
    got = PROMPT + "".join(ctx.generate(PROMPT, max_tokens=40, temperature=0)) + "\n"
    assert got == want
    assert got.startswith(GREEDY)
    assert ctx.stop_reason in ("length", "eog")


def test_tokenize_roundtrip(target):
    toks = target.tokenize(PROMPT)
    assert toks[0] == target.bos == 0
    assert target.detokenize(toks, skip_special=True) == PROMPT
    assert target.tokenize(PROMPT, add_bos=False) == toks[1:]
    assert target.tokenize("<|eos|>", add_bos=False, parse_special=True) == [target.eos]
    assert target.is_eog(target.eos) and not target.is_eog(toks[1])
    assert target.tokenize("") == [target.bos]
    long = "word " * 3000
    assert len(target.tokenize(long)) > 1000
    with pytest.raises(kiln.InvalidArgumentError) as e:
        target.detokenize([target.n_vocab + 5])
    assert e.value.status == -1 and e.value.name == "KILN_E_INVALID_ARG"


def test_model_info_and_metadata(target):
    info = target.info()
    assert info.arch == b"llama" and info.n_vocab == target.n_vocab == 4096
    assert info.as_dict()["arch"] == "llama" and info.n_layer == 6
    assert target.meta("general.architecture") == "llama"
    assert target.meta("no.such.key", None) is None
    with pytest.raises(kiln.NotFoundError):
        target.meta("no.such.key")
    with pytest.raises(kiln.InvalidArgumentError):
        target.meta("llama.block_count")  # not a string


def test_streaming_detokenizer_holds_split_characters(target):
    text = "caf\u00e9 \u2603 \U0001F600 done"
    toks = target.tokenize(text, add_bos=False)
    with target.detokenizer() as d:
        pieces = [d.push(t) for t in toks] + [d.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert target.detokenize_bytes(toks) == text.encode("utf-8")


def test_batch_of_sequences_equals_each_alone(target):
    prompts = ["In the beginning", "And God said", "Let there be light and"]
    toks = [target.tokenize(p) for p in prompts]
    with kiln.Context(target, n_ctx=512, n_seq_max=4, n_threads=THREADS) as c:
        alone = []
        for t in toks:
            c.kv.clear()
            c.decode(t)
            alone.append(c.logits())
        c.kv.clear()
        b = kiln.Batch()
        last = {}
        for pos in range(max(map(len, toks))):
            for s, t in enumerate(toks):
                if pos < len(t):
                    b.add(t[pos], seq_id=s, pos=pos, logits=pos == len(t) - 1)
                    if pos == len(t) - 1:
                        last[s] = len(b) - 1
        c.decode(b)
        for s in range(len(toks)):
            got = c.logits(last[s])
            assert max(abs(x - y) for x, y in zip(got, alone[s])) < 0.02  # as test_reference.c
            assert c.kv.seq_pos_max(s) == len(toks[s]) - 1
        assert c.logits(0) is None  # not requested
        with pytest.raises(kiln.InvalidArgumentError):
            c.decode([1, 2], seq_id=[0])


def test_sampler_seeded_and_greedy(ctx, target):
    ctx.decode(target.tokenize(PROMPT))
    logits = ctx.logits()
    with kiln.Sampler(temperature=0) as g:
        assert g.sample(logits) == logits.index(max(logits)) == ctx.sample(g)
    draws = []
    for _ in range(2):
        with kiln.Sampler(temperature=1.0, seed=42) as s:
            draws.append([s.sample(logits) for _ in range(20)])
    assert draws[0] == draws[1]
    with pytest.raises(kiln.InvalidArgumentError):
        kiln.Sampler(temperature=0).sample([float("nan")] * 8)
    with pytest.raises(TypeError):
        kiln.Sampler(no_such_knob=1)


def test_generate_continues_a_sequence(ctx, target):
    first = list(ctx.generate_tokens(PROMPT, max_tokens=5, temperature=0))
    more = list(ctx.generate_tokens(" and", max_tokens=5, temperature=0, reset=False,
                                    add_bos=False))
    assert len(first) == 5 and len(more) == 5
    # the cache holds prompt + first (less its last, never decoded) + " and" + more[:-1]
    n_prompt = len(target.tokenize(PROMPT))
    assert ctx.kv.seq_len(0) == n_prompt + 4 + len(target.tokenize(" and", add_bos=False)) + 4


def test_speculative_equals_plain(target, draft_model):
    with kiln.Context(target, n_ctx=512, n_threads=THREADS) as c:
        plain = list(c.generate_tokens(PROMPT, max_tokens=30, temperature=0))
        with kiln.Draft(c, draft_model, n_draft=4) as d:
            assert d.generate_all(PROMPT, max_tokens=30) == plain
            assert list(d.generate_tokens(PROMPT, max_tokens=30)) == plain
            text = "".join(d.generate(PROMPT, max_tokens=30))
            assert text == target.detokenize(plain)
            st = d.stats()
            assert st.n_proposed > 0 and 0 < st.n_accepted <= st.n_proposed
            with pytest.raises(kiln.BusyError):
                kiln.Draft(c, draft_model)
        # seeded sampling: the draft preserves the target's choices exactly
        with kiln.Sampler(temperature=0.9, seed=7) as s:
            plain_s = list(c.generate_tokens(PROMPT, max_tokens=20, sampler=s))
        d = kiln.Draft(c, draft_model)
        with kiln.Sampler(temperature=0.9, seed=7) as s:
            for t in target.tokenize(PROMPT):
                s.accept(t)
            assert list(d.generate_tokens(PROMPT, max_tokens=20, sampler=s)) == plain_s
    # the target was closed first: the draft is detached, close still works
    assert d.stats().n_proposed > 0
    with pytest.raises(kiln.InvalidArgumentError):
        d.generate_all(PROMPT, max_tokens=3)
    d.close()
    d.close()


def test_split_model_logits_equal_unsplit(target_path, target):
    # the same device named twice: two device handles, the activations
    # copied between them through the host; on the CPU bit for bit
    if BACKEND not in (None, "", "cpu"):
        pytest.skip("the split test names cpu:0")
    toks = target.tokenize(PROMPT)
    with kiln.Model(target_path, split="cpu:0:2,cpu:0") as sm:
        with kiln.Context(target, n_threads=THREADS) as a, kiln.Context(sm, n_threads=THREADS) as b:
            a.decode(toks)
            b.decode(toks)
            assert a.logits() == b.logits()
    with pytest.raises(kiln.InvalidArgumentError):
        kiln.Model(target_path, split="cpu:0:1")
    with pytest.raises(kiln.NotFoundError):
        kiln.Model(target_path, split="nosuch:0,cpu:0")
