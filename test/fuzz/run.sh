#!/bin/sh
# Runs the GGUF fuzzer: sh test/fuzz/run.sh BINARY SECONDS
# The corpus lives beside the binary (BINARY's dir/corpus); it is seeded by
# make_corpus.sh when missing or empty. Crash inputs are written beside the
# binary too (crash-*, leak-*, timeout-*). Exits non-zero on any finding.
set -u
bin=${1:?usage: run.sh BINARY SECONDS}
secs=${2:-60}
dir=$(dirname "$bin")
corpus="$dir/corpus"
here=$(dirname "$0")
if [ ! -d "$corpus" ] || [ -z "$(ls -A "$corpus" 2>/dev/null)" ]; then
    sh "$here/make_corpus.sh" "$corpus" || exit 1
fi
"$bin" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -max_len=131072 -artifact_prefix="$dir/" "$corpus"
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "fuzz: the fuzzer reported a problem (exit $rc); inputs are in $dir/" >&2
fi
exit "$rc"
