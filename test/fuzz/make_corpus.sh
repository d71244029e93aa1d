#!/bin/sh
# Seeds the GGUF fuzz corpus: sh test/fuzz/make_corpus.sh [DIR]
# (default build/fuzz/corpus). Seeds are truncated copies of the first
# 64 KiB of ../shared/models/*.gguf and ../shared/vocab/*.gguf (nothing of
# them is committed) plus small crafted files that reach the tensor infos
# and nested arrays, which a 64 KiB prefix of a real model never does.
set -eu
out=${1:-build/fuzz/corpus}
shared=${KILN_SHARED:-../shared}
mkdir -p "$out"

n=0
for f in "$shared"/models/*.gguf "$shared"/vocab/*.gguf; do
    [ -f "$f" ] || continue
    base=$(basename "$f" .gguf)
    for len in 256 4096 65536; do
        head -c "$len" "$f" > "$out/$base-$len.gguf"
        n=$((n + 1))
    done
done

# Little-endian integers as bytes (values below 2^63).
le() { # le BYTES VALUE
    v=$2; i=0
    while [ "$i" -lt "$1" ]; do
        printf "\\$(printf %o $((v & 255)))"
        v=$((v >> 8)); i=$((i + 1))
    done
}
str() { le 8 ${#1}; printf %s "$1"; }
zeros() { i=0; while [ "$i" -lt "$1" ]; do printf '\000'; i=$((i + 1)); done; }
bytes() { i=0; while [ "$i" -lt "$1" ]; do printf "\\$(printf %o $(( (i * 7 + 1) & 255 )))"; i=$((i + 1)); done; }

# A valid file: a few keys (string, u32, f32, bool, arrays, a nested array)
# and three tensors of different types.
small() {
    printf GGUF; le 4 3; le 8 3; le 8 6
    str general.architecture; le 4 8; str llama
    str llama.block_count; le 4 4; le 4 2
    str llama.rope.freq_base; le 4 6; le 4 1176256512        # 10000.0f
    str tokenizer.ggml.add_bos_token; le 4 7; printf '\001'
    str tokenizer.ggml.tokens; le 4 9; le 4 8; le 8 3; str a; str bc; str '<s>'
    str test.nested; le 4 9; le 4 9; le 8 2
        le 4 5; le 8 2; le 4 1; le 4 2
        le 4 8; le 8 1; str x
    # infos: name, n_dims, ne..., type, offset
    str w.f32; le 4 2; le 8 4; le 8 2; le 4 0; le 8 0          # 32 bytes
    str w.q8_0; le 4 1; le 8 32; le 4 8; le 8 32               # 34 bytes
    str w.f16; le 4 1; le 8 3; le 4 1; le 8 96                 # 6 bytes
}
small > "$out/crafted-small.gguf"
len=$(wc -c < "$out/crafted-small.gguf")
pad=$(( (32 - len % 32) % 32 ))
{ zeros "$pad"; bytes 32; bytes 34; zeros 30; bytes 6; } >> "$out/crafted-small.gguf"
n=$((n + 1))

# Version 2, an explicit alignment and one tensor.
{
    printf GGUF; le 4 2; le 8 1; le 8 1
    str general.alignment; le 4 4; le 4 64
    str t; le 4 1; le 8 16; le 4 0; le 8 0
} > "$out/crafted-align64.gguf"
len=$(wc -c < "$out/crafted-align64.gguf")
{ zeros $(( (64 - len % 64) % 64 )); bytes 64; } >> "$out/crafted-align64.gguf"
n=$((n + 1))

echo "make_corpus: $n seeds in $out"
