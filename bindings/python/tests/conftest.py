"""pytest fixtures of the kiln binding's tests.

Run from anywhere: `python3 -m pytest bindings/python/tests` (test/python.sh
does it for `make check`). The package is imported from bindings/python;
the library is $KILN_LIBRARY or $KILN_BUILD/libkiln.so.0 or build/; the
shared models are $KILN_SHARED or ../shared (tests needing them skip when
absent).
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
BUILD = os.environ.get("KILN_BUILD") or os.path.join(REPO, "build")
if not os.path.isabs(BUILD):
    BUILD = os.path.join(REPO, BUILD)
if "KILN_LIBRARY" not in os.environ:
    os.environ["KILN_LIBRARY"] = os.path.join(BUILD, "libkiln.so.0")
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))

import kiln  # noqa: E402

SHARED = os.environ.get("KILN_SHARED") or os.path.join(REPO, "..", "shared")
THREADS = 2
# KILN_BACKEND picks the backend of every model the tests load ("cpu" when
# unset), as it does for the C tests: KILN_BACKEND=cuda bash test/python.sh
BACKEND = os.environ.get("KILN_BACKEND") or None


def load(path, **kw):
    """kiln.Model on the tests' backend."""
    return kiln.Model(path, backend=BACKEND, **kw)


def shared_path(rel):
    """A path under ../shared, or skip the test if it is not there."""
    p = os.path.join(SHARED, rel)
    if not os.path.exists(p):
        pytest.skip("%s not found (../shared or $KILN_SHARED)" % rel)
    return p


@pytest.fixture(scope="session")
def target_path():
    return shared_path("models/tiny-target-f16.gguf")


@pytest.fixture(scope="session")
def draft_path():
    return shared_path("models/tiny-draft-f16.gguf")


@pytest.fixture(scope="session")
def target(target_path):
    with load(target_path) as m:
        yield m


@pytest.fixture(scope="session")
def draft_model(draft_path):
    with load(draft_path) as m:
        yield m


@pytest.fixture
def ctx(target):
    with kiln.Context(target, n_ctx=1024, n_threads=THREADS, n_seq_max=4) as c:
        yield c
