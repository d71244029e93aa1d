"""kiln.quantize (kiln_model_quantize; the C side is tested by
test/test_quantize.c): a conversion that loads, progress and cancel, an
exception in the callback, errors leave no file."""

import os

import pytest

import kiln

from conftest import REPO, load, shared_path

BUNDLED = os.path.join(REPO, "models", "tiny-target-q4_k_m.gguf")


def test_quantize_and_load(tmp_path):
    src = shared_path("models/tiny-draft-f16.gguf")
    out = tmp_path / "q4_0.gguf"
    seen = []
    kiln.quantize(src, out, "q4_0", threads=2, progress=lambda i, n, name, t: seen.append((i, n, name, t)))
    assert seen and seen[0][0] == 0 and seen[-1][0] == seen[-1][1] - 1
    assert ("output.weight", 14) in {(s[2], s[3]) for s in seen}  # Q6_K output, as llama.cpp
    with load(out) as m:
        assert m.n_vocab == 4096


def test_cancel_and_errors(tmp_path):
    out = tmp_path / "x.gguf"
    with pytest.raises(kiln.CancelledError):
        kiln.quantize(BUNDLED, out, "q8_0", allow_requantize=True, progress=lambda i, n, name, t: i == 2)
    assert not out.exists()

    def boom(i, n, name, t):
        raise KeyError("from the callback")
    with pytest.raises(KeyError):
        kiln.quantize(BUNDLED, out, "q8_0", allow_requantize=True, progress=boom)
    with pytest.raises(kiln.UnsupportedError):
        kiln.quantize(BUNDLED, out, "q4_0")          # already quantized
    with pytest.raises(kiln.KilnIOError):
        kiln.quantize(tmp_path / "none.gguf", out, "q4_0")
    with pytest.raises(ValueError):
        kiln.quantize(BUNDLED, out, "q9_9")
    assert not out.exists() and os.listdir(tmp_path) == []
