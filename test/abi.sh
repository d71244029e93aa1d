#!/bin/bash
# test/abi.sh - the ABI guard (run by make check from the repository root;
# the environment comes from the Makefile: KILN_BUILD, KILN_VERSION, CC, CXX).
#
#   header_*     include/kiln.h and kiln_backend.h compile as C99 and C++11
#                with -pedantic -Wall -Wextra -Werror (gcc, and clang when
#                present); kiln.h includes only <stddef.h> and <stdint.h>
#   symbols      the exported kiln_* names == test/abi/kiln.symbols, each
#                declared KILN_API in include/kiln.h, nothing else exported,
#                all under a KILN_ version node; SONAME libkiln.so.MAJOR
#   abidiff      abidiff against test/abi/libkiln.abi: fails on an
#                incompatible change (exit bit 8), a tool error, or any
#                removed function/variable/symbol; additions are fine
#   old_binary   build/abi/consumer-X.Y.Z (built against the header snapshot
#                test/abi/kiln-X.Y.Z.h) runs against the fresh library
#
# A deliberate API change: run test/abi/update.sh (or make abi-update) and
# commit what it writes. Prints "kt: N passed, N failed, N skipped".
set -u
cd "$(dirname "$0")/.."
build=${KILN_BUILD:-build}
version=${KILN_VERSION:-0.1.0}
cc=${CC:-cc}
cxx=${CXX:-c++}
lib="$build/libkiln.so.$version"
major=${version%%.*}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

n_pass=0; n_fail=0; n_skip=0
case_name=""
begin() { case_name=$1; case_failed=0; }
fail() { echo "  FAIL $case_name: $*"; case_failed=1; }
finish() {
    if [ "$case_failed" -ne 0 ]; then echo "FAIL $case_name"; n_fail=$((n_fail + 1))
    else echo "ok   $case_name"; n_pass=$((n_pass + 1)); fi
}
skip() { echo "  skip: $*"; echo "SKIP $case_name"; n_skip=$((n_skip + 1)); }
have() { command -v "$1" >/dev/null 2>&1; }

# Compiles $2 (a file, or "-" for stdin) with compiler $1 and flags $3...
compile() {
    local comp=$1 src=$2; shift 2
    if ! "$comp" "$@" -Iinclude -c "$src" -o "$tmp/out.o" > "$tmp/log" 2>&1; then
        fail "$comp $* $src:"; sed 's/^/    /' "$tmp/log"
    fi
}

C_STRICT=(-std=c99 -pedantic -Wall -Wextra -Werror)
CXX_STRICT=(-std=c++11 -pedantic -Wall -Wextra -Werror)

# ---- header_c99 / header_cxx -------------------------------------------------
check_headers() {
    local comp=$1 lang=$2
    if [ "$lang" = c ]; then
        for h in kiln.h kiln_backend.h; do
            printf '#include "%s"\n' "$h" > "$tmp/only.c"
            compile "$comp" "$tmp/only.c" "${C_STRICT[@]}"
        done
        compile "$comp" test/abi/header_c.c "${C_STRICT[@]}"
        compile "$comp" test/abi/header_c.c -std=c11 -pedantic -Wall -Wextra -Werror
    else
        for h in kiln.h kiln_backend.h; do
            printf '#include "%s"\n' "$h" > "$tmp/only.cpp"
            compile "$comp" "$tmp/only.cpp" "${CXX_STRICT[@]}"
        done
        compile "$comp" test/abi/header_cxx.cpp "${CXX_STRICT[@]}"
        compile "$comp" test/abi/header_cxx.cpp -std=c++17 -pedantic -Wall -Wextra -Werror
    fi
}

begin header_c99
check_headers "$cc" c
finish

begin header_cxx
if have "$cxx"; then check_headers "$cxx" cxx; finish; else skip "no C++ compiler ($cxx)"; fi

begin header_clang
if have clang && have clang++; then
    check_headers clang c
    check_headers clang++ cxx
    finish
else
    skip "clang not installed"
fi

begin header_includes
# The public header stays free of anything but the two fixed-width headers.
extra=$(grep -E '^[[:space:]]*#[[:space:]]*include' include/kiln.h \
        | grep -vE '<(stddef|stdint)\.h>' || true)
[ -z "$extra" ] || fail "include/kiln.h includes more than stddef.h/stdint.h: $extra"
extra=$(grep -E '^[[:space:]]*#[[:space:]]*include' include/kiln_backend.h \
        | grep -vE '"kiln\.h"' || true)
[ -z "$extra" ] || fail "include/kiln_backend.h includes more than kiln.h: $extra"
finish

# ---- symbols ------------------------------------------------------------------
begin symbols
if [ ! -f "$lib" ]; then
    fail "$lib not built"
else
    nm -D --defined-only "$lib" > "$tmp/nm"
    awk '$3 ~ /^kiln_/ { sub(/@.*/, "", $3); print $3 }' "$tmp/nm" | LC_ALL=C sort > "$tmp/syms"
    if ! diff -u test/abi/kiln.symbols "$tmp/syms" > "$tmp/diff"; then
        fail "exported symbols differ from test/abi/kiln.symbols (- removed, + added):"
        grep -E '^[-+]kiln_' "$tmp/diff" | sed 's/^/    /'
        grep -qE '^-kiln_' "$tmp/diff" &&
            echo "    Removing or renaming an exported symbol breaks callers: restore it."
        grep -qE '^\+kiln_' "$tmp/diff" &&
            echo "    Added symbols of a deliberate API extension: run test/abi/update.sh" &&
            echo "    (or make abi-update) and commit test/abi/ with the change."
    fi
    # Every export is a declared public function (no internal kiln_* leaks).
    while read -r s; do
        grep -qE "^KILN_API[^;]*[ *]$s\(" include/kiln.h ||
            fail "$s is exported but not declared KILN_API in include/kiln.h"
    done < "$tmp/syms"
    # Nothing but kiln_* and version nodes is exported, all versioned.
    bad=$(awk '$2 != "A" && $3 !~ /^kiln_/ { print $3 }' "$tmp/nm")
    [ -z "$bad" ] || fail "non-kiln symbols exported: $bad"
    unver=$(awk '$3 ~ /^kiln_/ && $3 !~ /@@?KILN_/ { print $3 }' "$tmp/nm")
    [ -z "$unver" ] || fail "symbols without a KILN_ version node: $unver"
    soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
    [ "$soname" = "libkiln.so.$major" ] || fail "SONAME is '$soname', expected libkiln.so.$major"
    [ "$(readlink "$build/libkiln.so.$major")" = "libkiln.so.$version" ] ||
        fail "$build/libkiln.so.$major does not link to libkiln.so.$version"
    [ "$(readlink "$build/libkiln.so")" = "libkiln.so.$major" ] ||
        fail "$build/libkiln.so does not link to libkiln.so.$major"
fi
finish

# ---- abidiff ------------------------------------------------------------------
begin abidiff
if ! have abidiff; then
    skip "abidiff not installed (apt-get install abigail-tools)"
elif [ ! -f "$lib" ]; then
    fail "$lib not built"; finish
else
    abidiff --headers-dir2 include test/abi/libkiln.abi "$lib" > "$tmp/abidiff" 2>&1
    rc=$?
    if [ $((rc & 3)) -ne 0 ]; then
        fail "abidiff could not compare (exit $rc):"
    elif [ $((rc & 8)) -ne 0 ]; then
        fail "incompatible ABI change against test/abi/libkiln.abi (exit $rc):"
    elif grep -qE '(^|[^0-9])[1-9][0-9]* Removed' "$tmp/abidiff"; then
        fail "symbols removed against test/abi/libkiln.abi:"
    elif [ $((rc & 4)) -ne 0 ]; then
        echo "  compatible changes (additions); run test/abi/update.sh to record them:"
    fi
    [ $rc -ne 0 ] && sed 's/^/    /' "$tmp/abidiff" | head -n 80
    finish
fi

# ---- old_binary -----------------------------------------------------------------
model=""
for m in "${KILN_SHARED:-../shared}/models/tiny-target-f16.gguf"; do
    [ -f "$m" ] && model=$m
done
shopt -s nullglob
consumers=("$build"/abi/consumer-*)
[ ${#consumers[@]} -gt 0 ] || { begin old_binary; fail "no $build/abi/consumer-* built"; finish; }
for c in "${consumers[@]}"; do
    begin "old_binary_${c##*/consumer-}"
    LD_LIBRARY_PATH="$build${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$c" test/abi/kiln.symbols $model > "$tmp/consumer" 2>&1
    rc=$?
    cat "$tmp/consumer"
    [ -n "$model" ] || echo "  (../shared/models/tiny-target-f16.gguf not found: no generation)"
    case $rc in
        0) finish ;;
        77) skip "part of the API is not implemented yet" ;;
        *) fail "exit status $rc"; finish ;;
    esac
done

echo "kt: $n_pass passed, $n_fail failed, $n_skip skipped"
[ "$n_fail" -eq 0 ]
