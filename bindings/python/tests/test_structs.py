"""The ctypes mirrors of include/kiln.h's structs have the C layout: sizeof
from the library itself (kiln_*_init_sized writes struct_size = min(given,
the library's size), so a big buffer reads back the library's sizeof) and
every field's offset and size from the C compiler (a tiny generated C
program over include/kiln.h; skipped without a compiler)."""

import ctypes
import os
import shutil
import subprocess

import pytest

import kiln
from kiln import _lib

from conftest import REPO

STRUCTS = _lib.STRUCTS


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c._c_name_)
def test_size_matches_library(cls):
    buf = (ctypes.c_uint8 * 4096)()
    getattr(_lib.lib, cls._init_)(ctypes.cast(buf, ctypes.POINTER(cls)), 4096)
    lib_size = ctypes.c_uint32.from_buffer(buf).value
    assert ctypes.sizeof(cls) == lib_size, cls._c_name_
    # and init_sized with our size fills struct_size with it
    assert cls.new().struct_size == ctypes.sizeof(cls)


def _c_layout(tmp_path):
    cc = os.environ.get("CC") or "cc"
    if not shutil.which(cc.split()[0]):
        pytest.skip("no C compiler (%s)" % cc)
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "kiln.h"',
             "int main(void) {"]
    for cls in STRUCTS:
        c = cls._c_name_
        lines.append('    printf("%s %%zu\\n", sizeof(%s));' % (c, c))
        for name, _ in cls._fields_:
            lines.append('    printf("%s.%s %%zu %%zu\\n", offsetof(%s, %s), sizeof(((%s *)0)->%s));'
                         % (c, name, c, name, c, name))
    lines += ["    return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run(cc.split() + ["-std=c11", "-I", os.path.join(REPO, "include"), "-o", str(exe),
                                 str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    table = {}
    for line in out.splitlines():
        key, *vals = line.split()
        table[key] = tuple(int(v) for v in vals)
    return table


def test_layout_matches_header(tmp_path):
    table = _c_layout(tmp_path)
    for cls in STRUCTS:
        c = cls._c_name_
        assert table[c] == (ctypes.sizeof(cls),), "sizeof(%s)" % c
        for name, _ in cls._fields_:
            field = getattr(cls, name)
            assert table["%s.%s" % (c, name)] == (field.offset, field.size), \
                "%s.%s offset/size" % (c, name)


def test_every_header_struct_is_mirrored():
    """A struct added to kiln.h with a struct_size needs a mirror here."""
    with open(os.path.join(REPO, "include", "kiln.h")) as f:
        header = f.read()
    import re
    declared = set(re.findall(r"typedef struct (kiln_\w+) \{\s*uint32_t struct_size;", header))
    mirrored = {cls._c_name_ for cls in STRUCTS}
    assert declared == mirrored
    assert kiln.ModelParams is _lib.ModelParams


def test_every_exported_function_is_bound():
    """Each KILN_API function of kiln.h has a prototype in kiln._lib (so a
    function added to the header is noticed here)."""
    import re
    with open(os.path.join(REPO, "include", "kiln.h")) as f:
        header = f.read()
    declared = set(re.findall(r"KILN_API[^;(]*?\b(kiln_\w+)\s*\(", header))
    assert declared - set(_lib._PROTOTYPES) == set()
    assert set(_lib._PROTOTYPES) - declared == set()
