#!/bin/bash
# test/kiln_tokenize.sh - the kiln-tokenize example: exit codes and the ids
# it prints (run by make check from the repository root; KILN_BUILD names
# the build).
#   usage      no model: usage on stderr, exit 2
#   bad_file   a missing model: "kiln-tokenize: FILE: ..." on stderr, exit 1
#   tokens     tiny-target-f16 (skipped without ../shared): the ids of
#              llama.cpp's reference for "In the beginning" (BOS added), with
#              --no-bos and --parse-special, and from -f FILE / stdin
set -u
cd "$(dirname "$0")/.."
bin=${KILN_BUILD:-build}/bin/kiln-tokenize
pass=0; fail=0; skip=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
finish() { echo "kt: $pass passed, $fail failed, $skip skipped"; [ "$fail" -eq 0 ]; exit $?; }
if [ ! -x "$bin" ]; then bad build "$bin is missing"; finish; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" -p x > "$tmp/out" 2> "$tmp/err"; rc=$?
if [ "$rc" -eq 2 ] && grep -q '^usage: kiln-tokenize -m FILE' "$tmp/err" && [ ! -s "$tmp/out" ]; then
    ok usage; else bad usage "rc=$rc"; fi

"$bin" -m "$tmp/none.gguf" -p x > "$tmp/out" 2> "$tmp/err"; rc=$?
if [ "$rc" -eq 1 ] && grep -q "^kiln-tokenize: $tmp/none.gguf: " "$tmp/err" && [ ! -s "$tmp/out" ]; then
    ok bad_file; else bad bad_file "rc=$rc: $(cat "$tmp/err")"; fi

model=${KILN_SHARED:-../shared}/models/tiny-target-f16.gguf
if [ -f "$model" ]; then
    errs=""
    check() { # expected, then the arguments
        want=$1; shift
        got=$("$bin" -m "$model" "$@" 2> "$tmp/err")
        [ "$got" = "$want" ] || errs="$errs [$* -> '$got' want '$want' $(cat "$tmp/err")]"
    }
    check "0 889 261 2360" -p "In the beginning"
    check "889 261 2360 1" -p "In the beginning<|eos|>" --no-bos --parse-special
    printf 'In the beginning' > "$tmp/in.txt"
    check "0 889 261 2360" -f "$tmp/in.txt"
    got=$(printf 'In the beginning' | "$bin" -m "$model" --no-bos)
    [ "$got" = "889 261 2360" ] || errs="$errs [stdin -> '$got']"
    check "0" -p ""
    if [ -z "$errs" ]; then ok tokens; else bad tokens "$errs"; fi
else
    echo "  skip: $model not found"; echo "SKIP tokens"; skip=$((skip + 1))
fi
finish
