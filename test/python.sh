#!/bin/bash
# The Python binding's pytest suite (bindings/python/tests) against the
# library of this build ($KILN_BUILD/libkiln.so.0), reported to test/run.sh
# as a "kt: N passed, N failed, N skipped" line (pytest's own counts).
# Exit 77 (skipped) without python3 + pytest or without the library.
#
# Sanitized builds (SANITIZE set): the library needs the sanitizer runtime
# loaded first, so the compiler's libasan (and libubsan) are preloaded into
# python; leak detection is off there (the interpreter itself keeps memory
# until exit; the C suites and valgrind prove the library's leaks).
BUILD=${KILN_BUILD:-build}
LIB=$BUILD/libkiln.so.0
[ -f "$LIB" ] || { echo "skip: $LIB not built"; exit 77; }

py=
for cand in ${PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import pytest' >/dev/null 2>&1; then
        py=$cand; break
    fi
done
[ -n "$py" ] || { echo "skip: no python3 with pytest (Debian: python3-pytest)"; exit 77; }

case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD;; esac
export KILN_LIBRARY=$BUILD/libkiln.so.0 KILN_BUILD=$BUILD PYTHONDONTWRITEBYTECODE=1
if [ -n "${SANITIZE:-}" ]; then
    cc=${CC:-cc}
    pre=
    rts=()
    case "$SANITIZE" in *address*) rts+=(libasan.so);; esac
    case "$SANITIZE" in *undefined*) rts+=(libubsan.so);; esac
    for rt in "${rts[@]}"; do
        f=$($cc -print-file-name=$rt 2>/dev/null)
        case "$f" in /*) pre="$pre${pre:+:}$(readlink -f "$f")";; esac
    done
    [ -n "$pre" ] || { echo "skip: sanitized build but no sanitizer runtime found via $cc"; exit 77; }
    export LD_PRELOAD=$pre
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"  # last one wins
fi

out=$("$py" -m pytest -q -rs -p no:cacheprovider bindings/python/tests 2>&1); rc=$?
printf '%s\n' "$out"
summary=$(printf '%s\n' "$out" | grep -E '^=*\s*[0-9]+ (passed|failed|skipped|error)' | tail -n 1)
count() { printf '%s\n' "$summary" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
p=$(count passed); f=$(count failed); s=$(count skipped); e=$(count 'errors?')
echo "kt: $p passed, $((f + e)) failed, $s skipped"
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ]  # 5: no tests collected
