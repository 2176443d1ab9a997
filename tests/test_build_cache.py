"""The native build cache heals itself (issue 18): OS-released locks, atomic installs, broken
libraries rebuilt.  The cases run in subprocesses with timeouts (a regression would hang), in
private cache directories; the compiler is replaced by a copy of the library this process
built, so no case compiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lensblur.ops import native

pytestmark = pytest.mark.skipif(not native.is_available("cpu"), reason="native kernels unavailable")

ROOT = Path(__file__).resolve().parent.parent

# Runs ``_build`` once per case directory in $CASES (JSON list of [cache_dir, garbage]); the
# compiler is replaced by a copy of $REAL_LIB (or garbage).  Prints one JSON line per case.
CHILD = textwrap.dedent("""
    import json, os, shutil
    from pathlib import Path
    import lensblur.ops.native as n
    calls = []
    def fake_compile(sources, out_dir, key):
        calls.append(key)
        dst = Path(out_dir) / "built.so"
        if os.environ.get("GARBAGE"):
            dst.write_bytes(b"not a library")
        else:
            shutil.copyfile(os.environ["REAL_LIB"], dst)
        return dst
    n._compile = fake_compile
    for cache, garbage in json.loads(os.environ["CASES"]):
        os.environ["LENSBLUR_EXTENSIONS_DIR"] = cache
        os.environ["GARBAGE"] = "1" if garbage else ""
        del calls[:]
        try:
            n._build()
            ok = True
        except Exception as exc:
            ok = type(exc).__name__
        print("RESULT " + json.dumps([cache, ok, len(calls)]), flush=True)
""")

# Takes the build lock exactly as ``native._build_lock`` does (flock on ``build.lock``), leaves a
# half-written private build directory, and dies by SIGKILL while holding the lock.
KILLED_BUILDER = textwrap.dedent("""
    import fcntl, os, signal, sys
    d = sys.argv[1]
    os.makedirs(os.path.join(d, "tmp-build-dead"))
    f = open(os.path.join(d, "build.lock"), "a+b")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    open(os.path.join(d, "tmp-build-dead", "half.so"), "wb").write(b"\\x7fELF")
    print("LOCKED", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _key_dir(cache: Path) -> Path:
    return cache / f"native_{native._build_key(native.source_paths())}"


# the library this process loaded (the skipif above built or loaded it)
REAL_LIB = Path(native.load_library()._name) if native.is_available("cpu") else None


def _run_cases(cases, timeout: float = 90.0) -> dict:
    env = dict(os.environ, REAL_LIB=str(REAL_LIB),
               CASES=json.dumps([[str(c), garbage] for c, garbage in cases]))
    env.pop("TORCH_EXTENSIONS_DIR", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    results = [json.loads(ln[len("RESULT "):]) for ln in proc.stdout.splitlines()
               if ln.startswith("RESULT ")]
    assert len(results) == len(cases), out
    return results


def test_killed_builder_does_not_block_the_next_one(tmp_path):
    """A builder killed while holding the lock, its build half written: the next process gets
    the lock at once, clears the debris and builds (within the timeout instead of forever)."""
    d = _key_dir(tmp_path)
    d.mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", KILLED_BUILDER, str(d)], capture_output=True,
                         text=True, timeout=30)
    assert "LOCKED" in out.stdout and out.returncode != 0
    [(_, ok, calls)] = _run_cases([(tmp_path, False)])
    assert (ok, calls) == (True, 1)
    assert not list(d.glob("tmp-build-*"))
    assert (d / native._LIB_NAME).read_bytes() == REAL_LIB.read_bytes()


def _seed(cache: Path, content: bytes, digest_of: bytes = None) -> None:
    d = _key_dir(cache)
    d.mkdir(parents=True)
    (d / native._LIB_NAME).write_bytes(content)
    if digest_of is not None:
        import hashlib
        (d / (native._LIB_NAME + ".sha256")).write_text(hashlib.sha256(digest_of).hexdigest())


def test_cache_heals_itself(tmp_path):
    """One process, one case per cache directory: fresh (built once, then loaded without a
    build), zero-byte / truncated / digest-less libraries (rebuilt), a complete but unloadable
    file (rebuilt once), and a rebuild that is no better (an error, not a loop)."""
    real = REAL_LIB.read_bytes()
    fresh = tmp_path / "fresh"
    cases = {"zero-byte": (b"", real), "truncated": (real[:len(real) // 3], real),
             "no-digest": (real, None), "unloadable": (b"garbage, complete", b"garbage, complete")}
    for name, (content, digest_of) in cases.items():
        _seed(tmp_path / name, content, digest_of)
    _seed(tmp_path / "hopeless", b"garbage, complete", b"garbage, complete")
    order = [(fresh, False), (fresh, False)] + [(tmp_path / n, False) for n in cases] \
        + [(tmp_path / "hopeless", True)]
    results = _run_cases(order)
    assert [r[1:] for r in results[:2]] == [[True, 1], [True, 0]]
    assert not list(_key_dir(fresh).glob("tmp-build-*"))     # the private build dir is gone
    for (_, ok, calls), name in zip(results[2:6], cases):
        assert (ok, calls) == (True, 1), name
        assert (_key_dir(tmp_path / name) / native._LIB_NAME).read_bytes() == real, name
    assert results[6][1:] == ["OSError", 1]


def test_build_key_is_stable_across_a_real_build(tmp_path, monkeypatch):
    """A real compile must not change the build key of this process (cpp_extension appends to
    the link-flag list it is given: with a shared list the key moved after the first build, so
    the next lookup in the same process missed the library it had just installed)."""
    key = native._build_key(native.source_paths())
    monkeypatch.setenv("LENSBLUR_EXTENSIONS_DIR", str(tmp_path))
    native._build()
    assert native._build_key(native.source_paths()) == key
    assert (_key_dir(tmp_path) / native._LIB_NAME).is_file()
