#!/bin/bash
# test/kiln_info.sh - the kiln-info example: exit codes and what it prints
# (run by make check from the repository root; KILN_BUILD names the build).
#   usage      no arguments: usage on stderr, exit 2
#   bad_file   a missing file and a non-GGUF file: "kiln-info: FILE: ..." on
#              stderr, exit 1
#   model      tiny-target-f16 (skipped without ../shared): architecture,
#              hyperparameters, tokenizer, tensor table
set -u
cd "$(dirname "$0")/.."
bin=${KILN_BUILD:-build}/bin/kiln-info
pass=0; fail=0; skip=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
finish() { echo "kt: $pass passed, $fail failed, $skip skipped"; [ "$fail" -eq 0 ]; exit $?; }
if [ ! -x "$bin" ]; then bad build "$bin is missing"; finish; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" > "$tmp/out" 2> "$tmp/err"; rc=$?
if [ "$rc" -eq 2 ] && grep -q '^usage: kiln-info FILE' "$tmp/err" && [ ! -s "$tmp/out" ]; then
    ok usage; else bad usage "rc=$rc"; fi

"$bin" "$tmp/none.gguf" > /dev/null 2> "$tmp/err"; rc1=$?
printf 'GGUF\001\000\000\000' > "$tmp/v1.gguf"
"$bin" "$tmp/v1.gguf" > /dev/null 2> "$tmp/err2"; rc2=$?
if [ "$rc1" -eq 1 ] && grep -q "^kiln-info: $tmp/none.gguf: .*No such file" "$tmp/err" &&
   [ "$rc2" -eq 1 ] && grep -q "^kiln-info: $tmp/v1.gguf: gguf: unsupported version 1" "$tmp/err2"; then
    ok bad_file; else bad bad_file "rc=$rc1/$rc2: $(cat "$tmp/err" "$tmp/err2")"; fi

model=${KILN_SHARED:-../shared}/models/tiny-target-f16.gguf
if [ -f "$model" ]; then
    "$bin" "$model" > "$tmp/out" 2> "$tmp/err"; rc=$?
    missing=""
    for want in 'general.architecture +str += "llama"' 'llama.block_count +u32 += 6' \
                'tokenizer.ggml.model +str += "gpt2"' '^  tokens +4096' \
                'tokenizer.ggml.tokens +arr += \[str x 4096\] \["<\|bos\|>"' \
                '^tensors: 57,' 'token_embd.weight +f16 +512 x 4096 +4194304'; do
        grep -Eq "$want" "$tmp/out" || missing="$missing [$want]"
    done
    if [ "$rc" -eq 0 ] && [ -z "$missing" ]; then ok model; else bad model "rc=$rc missing$missing"; fi
else
    echo "SKIP model (no ../shared)"; skip=$((skip + 1))
fi
finish
