#!/bin/bash
# test/install.sh - install and consume, as a packager and an application do
# (run by make check from the repository root; the Makefile passes MAKE,
# KILN_BUILD_ROOT, KILN_PREFIX, KILN_LIBDIR, KILN_INCLUDEDIR, KILN_BINDIR,
# CC, SANITIZE).
#
#   install     make install PREFIX=$KILN_PREFIX DESTDIR=$tmp: headers, both
#               libraries with SONAME symlinks, kiln.pc, the examples
#   pkgconfig   kiln.pc names the prefix and version; with
#               PKG_CONFIG_SYSROOT_DIR it points into the staged tree
#   shared      test/install/consumer.c built with `pkg-config --cflags
#               --libs kiln` needs libkiln.so.MAJOR and runs
#   static      built with `pkg-config --static` against libkiln.a (no
#               libkiln.so dependency) and runs
#   uninstall   make uninstall removes every installed file
#
# The same PREFIX as the build is used (it is compiled in as the plugin
# folder; another one would rebuild the tree). Prints the kt totals line.
set -u
cd "$(dirname "$0")/.."
make_cmd=${MAKE:-make}
build_root=${KILN_BUILD_ROOT:-build}
build=${KILN_BUILD:-build}
prefix=${KILN_PREFIX:-/usr/local}
libdir=${KILN_LIBDIR:-$prefix/lib}
includedir=${KILN_INCLUDEDIR:-$prefix/include}
bindir=${KILN_BINDIR:-$prefix/bin}
version=${KILN_VERSION:-0.1.0}
major=${version%%.*}
pkg_config=${PKG_CONFIG:-pkg-config}
cc=${CC:-cc}
san=()
[ -n "${SANITIZE:-}" ] && san=(-fsanitize="$SANITIZE")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stage="$tmp/stage"

n_pass=0; n_fail=0; n_skip=0
begin() { case_name=$1; case_failed=0; }
fail() { echo "  FAIL $case_name: $*"; case_failed=1; }
finish() {
    if [ "$case_failed" -ne 0 ]; then echo "FAIL $case_name"; n_fail=$((n_fail + 1))
    else echo "ok   $case_name"; n_pass=$((n_pass + 1)); fi
}
skip() { echo "  skip: $*"; echo "SKIP $case_name"; n_skip=$((n_skip + 1)); }
done_() { echo "kt: $n_pass passed, $n_fail failed, $n_skip skipped"; [ "$n_fail" -eq 0 ]; exit; }

begin install
if ! "$make_cmd" --no-print-directory install BUILD="$build_root" PREFIX="$prefix" \
        DESTDIR="$stage" > "$tmp/install.log" 2>&1; then
    fail "make install failed:"; sed 's/^/    /' "$tmp/install.log"; finish; done_
fi
for f in "$includedir/kiln.h" "$includedir/kiln_backend.h" "$libdir/libkiln.so.$version" \
         "$libdir/libkiln.a" "$libdir/pkgconfig/kiln.pc"; do
    [ -f "$stage$f" ] || fail "$f not installed"
done
[ "$(readlink "$stage$libdir/libkiln.so.$major")" = "libkiln.so.$version" ] ||
    fail "$libdir/libkiln.so.$major is not a link to libkiln.so.$version"
[ "$(readlink "$stage$libdir/libkiln.so")" = "libkiln.so.$major" ] ||
    fail "$libdir/libkiln.so is not a link to libkiln.so.$major"
cmp -s include/kiln.h "$stage$includedir/kiln.h" || fail "installed kiln.h differs"
for e in "$build"/bin/*; do
    [ -f "$e" ] && [ -x "$e" ] || continue
    case $e in *.d) continue ;; esac
    [ -x "$stage$bindir/${e##*/}" ] || fail "example ${e##*/} not installed in $bindir"
done
plugindir=${KILN_PLUGINDIR:-$libdir/kiln}
for p in "$build"/libkiln-*.so; do
    [ -f "$p" ] || continue
    [ -f "$stage$plugindir/${p##*/}" ] || fail "plugin ${p##*/} not installed in $plugindir"
done
finish

# The Python binding finds the library of its own install tree.
begin python
pydir=$prefix/share/kiln/python
if [ ! -f "$stage$pydir/kiln/__init__.py" ]; then
    fail "the Python package is not installed in $pydir"
elif [ -n "${SANITIZE:-}" ] || ! command -v python3 >/dev/null 2>&1 || [ "$libdir" != "$prefix/lib" ]; then
    skip "sanitized build, no python3 or a LIBDIR outside PREFIX/lib"
    case_failed=skip
else
    got=$(cd "$tmp" && env -u KILN_LIBRARY PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$stage$pydir" \
          python3 -c 'import kiln; print(kiln.library_path, kiln.version())' 2>&1)
    [ "$got" = "$stage$libdir/libkiln.so.$major $version" ] || fail "import kiln: $got"
fi
[ "$case_failed" = skip ] || finish

if ! command -v "$pkg_config" >/dev/null 2>&1; then
    begin pkgconfig; skip "$pkg_config not installed"
    done_
fi
# Only the staged kiln.pc, even where /usr/include is a system folder.
export PKG_CONFIG_LIBDIR="$stage$libdir/pkgconfig" PKG_CONFIG_PATH=""
export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1

begin pkgconfig
[ "$("$pkg_config" --modversion kiln)" = "$version" ] || fail "modversion is not $version"
[ "$("$pkg_config" --variable=prefix kiln)" = "$prefix" ] || fail "prefix is not $prefix"
export PKG_CONFIG_SYSROOT_DIR="$stage"
cflags=$("$pkg_config" --cflags kiln)
libs=$("$pkg_config" --libs kiln)
static_libs=$("$pkg_config" --static --libs kiln)
echo "  cflags: $cflags"; echo "  libs: $libs"; echo "  static libs: $static_libs"
case " $cflags " in *" -I$stage$includedir "*) ;; *) fail "cflags lack -I$stage$includedir" ;; esac
case " $libs " in *" -lkiln "*) ;; *) fail "libs lack -lkiln" ;; esac
finish

begin shared
# shellcheck disable=SC2086 # pkg-config output is a list of words
if "$cc" "${san[@]}" -o "$tmp/consumer-shared" test/install/consumer.c $cflags $libs \
        > "$tmp/cc.log" 2>&1; then
    readelf -d "$tmp/consumer-shared" | grep -q "NEEDED.*\[libkiln\.so\.$major\]" ||
        fail "consumer does not need libkiln.so.$major"
    LD_LIBRARY_PATH="$stage$libdir" "$tmp/consumer-shared" | sed 's/^/  /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "consumer-shared failed"
else
    fail "build failed:"; sed 's/^/    /' "$tmp/cc.log"
fi
finish

begin static
# -l:libkiln.a picks the archive where -lkiln would prefer the .so.
static_libs=$(printf '%s\n' "$static_libs" | sed -E 's/(^| )-lkiln( |$)/\1-l:libkiln.a\2/')
# shellcheck disable=SC2086
if "$cc" "${san[@]}" -o "$tmp/consumer-static" test/install/consumer.c $cflags $static_libs \
        > "$tmp/cc.log" 2>&1; then
    ! readelf -d "$tmp/consumer-static" | grep -q 'NEEDED.*libkiln' ||
        fail "consumer-static depends on a shared libkiln"
    "$tmp/consumer-static" | sed 's/^/  /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "consumer-static failed"
else
    fail "build failed:"; sed 's/^/    /' "$tmp/cc.log"
fi
finish

begin uninstall
if ! "$make_cmd" --no-print-directory uninstall BUILD="$build_root" PREFIX="$prefix" \
        DESTDIR="$stage" > "$tmp/uninstall.log" 2>&1; then
    fail "make uninstall failed:"; sed 's/^/    /' "$tmp/uninstall.log"
fi
left=$(find "$stage" \( -type f -o -type l \) | sed "s|^$stage||")
[ -z "$left" ] || fail "left behind: $left"
finish
done_
