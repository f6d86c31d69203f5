"""tests/vm/ansiballz_pyc.py, the test dom0's bytecode cache for Ansible's module payloads: the code
it returns is what zipimport itself would compile, for every source and every -O level."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "vm"
MODULES = {
    "plain.py": b"X = 'plain'\nassert False, 'asserts run'\n",
    "latin.py": "# -*- coding: latin-1 -*-\nX = '\u00e9'\n".encode("latin-1"),
    "bom.py": b"\xef\xbb\xbfX = 'bom'\n",
    "crlf.py": b"X = 'crlf'\r\nY = 2\r\n",
}
PROBE = """
import json, sys
sys.path.insert(0, {hook!r})
if {hooked}:
    import ansiballz_pyc
    ansiballz_pyc.CACHE = {cache!r}
sys.path.insert(0, {payload!r})
found = {{}}
for name in ("plain", "latin", "bom", "crlf"):
    try:
        module = __import__(name)
        found[name] = [getattr(module, "X", None), getattr(module, "Y", None), __debug__]
    except BaseException as error:
        found[name] = [type(error).__name__, str(error)]
print(json.dumps(found))
"""


def imported(payload: Path, cache: Path, hooked: bool, optimize: bool = False) -> dict[str, object]:
    code = PROBE.format(hook=str(HOOK), hooked=hooked, cache=str(cache), payload=str(payload))
    done = subprocess.run([sys.executable, *(["-O"] if optimize else []), "-c", code], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_cached_code_is_what_zipimport_compiles_for_every_source_and_level(tmp_path: Path) -> None:
    payload = tmp_path / "ansible_probe_payload.zip"  # the name AnsiballZ gives its payloads
    with zipfile.ZipFile(payload, "w") as archive:
        for name, data in MODULES.items():
            archive.writestr(name, data)
    cache = tmp_path / "cache"
    plain, plain_optimized = imported(payload, cache, False), imported(payload, cache, False, optimize=True)
    assert plain["plain"][0] == "AssertionError" and plain_optimized["plain"] == ["plain", None, False]
    assert plain["latin"] == ["\u00e9", None, True] and plain["bom"] == ["bom", None, True]
    for optimize, expected in ((False, plain), (True, plain_optimized), (False, plain), (True, plain_optimized)):
        assert imported(payload, cache, True, optimize) == expected  # filling the cache, then from it
    assert len(list(cache.glob("*.bin"))) == 2 * len(MODULES)  # one entry per source and -O level


def test_a_corrupt_entry_is_compiled_again_and_other_zips_are_left_alone(tmp_path: Path) -> None:
    payload = tmp_path / "ansible_probe_payload.zip"
    with zipfile.ZipFile(payload, "w") as archive:
        for name, data in MODULES.items():
            archive.writestr(name, data)
    cache = tmp_path / "cache"
    expected = imported(payload, cache, False)
    imported(payload, cache, True)
    for entry in cache.glob("*.bin"):
        entry.write_bytes(entry.read_bytes()[:40])  # truncated
    assert imported(payload, cache, True) == expected
    other = tmp_path / "other.zip"  # not an AnsiballZ payload: zipimport's own path, nothing cached
    other.write_bytes(payload.read_bytes())
    cache2 = tmp_path / "cache2"
    assert imported(other, cache2, True) == expected and not cache2.exists()


COUNT_COMPILES = """
import builtins, json, sys
sys.path.insert(0, {hook!r})
import ansiballz_pyc
ansiballz_pyc.CACHE = {cache!r}
ansiballz_pyc.install()
compiled = []
real = builtins.compile
def counting(source, filename, mode, *args, **kwargs):
    compiled.append(str(filename))
    return real(source, filename, mode, *args, **kwargs)
builtins.compile = counting  # zipimport's _compile_source calls the builtin by name
sys.path.insert(0, {payload!r})
import pkg.inner, crlf
print(json.dumps([compiled, pkg.inner.X, crlf.X, pkg.inner.__file__, pkg.__path__]))
"""


def test_a_cached_payload_compiles_nothing_not_even_for_its_specs(tmp_path: Path) -> None:
    """CPython 3.11's zipimporter compiles a module to answer get_filename, which find_spec asks for:
    with only get_code cached, each module was still compiled once per import (and without the hook,
    twice).  Once the cache is filled, an import compiles nothing, and the names are zipimport's."""
    payload = tmp_path / "ansible_probe_payload.zip"
    with zipfile.ZipFile(payload, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("crlf.py", MODULES["crlf.py"])
        archive.writestr("pkg/__init__.py", b"")
        archive.writestr("pkg/inner.py", b"X = 'inner'\n")
    cache = tmp_path / "cache"

    def run() -> list[object]:
        code = COUNT_COMPILES.format(hook=str(HOOK), cache=str(cache), payload=str(payload))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    first, second = run(), run()
    in_payload = [name for name in first[0] if name.startswith(str(payload))]  # type: ignore[union-attr]
    assert sorted(in_payload) == sorted(f"{payload}/{name}" for name in ("crlf.py", "pkg/__init__.py",
                                                                         "pkg/inner.py"))  # once each
    assert [name for name in second[0] if name.startswith(str(payload))] == []  # type: ignore[union-attr]
    assert second[1:] == first[1:] == ["inner", "crlf", f"{payload}/pkg/inner.py", [f"{payload}/pkg"]]


ERRORS = """
import importlib.util, json, sys
sys.path.insert(0, {hook!r})
if {hooked}:
    import ansiballz_pyc
    ansiballz_pyc.CACHE = {cache!r}
    ansiballz_pyc.install()
sys.path.insert(0, {payload!r})
found = {{}}
for name in ("bad", "warns"):
    try:
        spec = importlib.util.find_spec(name)
        found[name] = ["spec", spec.origin]
        __import__(name)
        found[name].append("imported")
    except BaseException as error:
        found[name] = found.get(name, []) + [type(error).__name__]
print(json.dumps(found))
"""


def test_compile_errors_and_warning_options_come_out_as_zipimport_gives_them(tmp_path: Path) -> None:
    """A source that does not compile fails at find_spec, as with zipimport; with -W options (which
    decide what a compile warns about, or raises) the cache stands aside."""
    payload = tmp_path / "ansible_probe_payload.zip"
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("bad.py", b"def (:\n")
        archive.writestr("warns.py", b"assert (1, 'always true')\n")  # a SyntaxWarning when compiled
    cache = tmp_path / "cache"

    def run(hooked: bool, *options: str) -> dict[str, object]:
        code = ERRORS.format(hook=str(HOOK), hooked=hooked, cache=str(cache), payload=str(payload))
        done = subprocess.run([sys.executable, *options, "-c", code], capture_output=True, text=True, timeout=60,
                              check=True)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    for options in ((), ("-W", "error::SyntaxWarning")):
        stock = run(False, *options)
        assert run(True, *options) == run(True, *options) == stock, options  # filling the cache, then from it
    assert run(False)["bad"] == ["SyntaxError"]
    assert run(False, "-W", "error::SyntaxWarning")["warns"] == ["SyntaxError"]
    assert run(True)["warns"] == ["spec", f"{payload}/warns.py", "imported"]
    assert run(True, "-W", "error::SyntaxWarning")["warns"] == ["SyntaxError"]  # a cached entry exists by now
