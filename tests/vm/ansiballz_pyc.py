"""A bytecode cache for Ansible's module payloads, installed only in the test dom0's image.

Each Ansible task runs its module as an AnsiballZ payload: a zip of the module and the
``ansible.module_utils`` it needs, written to a fresh temporary directory and imported from there
by ``zipimport``.  zipimport never writes bytecode, so every task compiles ``module_utils.basic``
and its imports from source again, and CPython 3.11's zipimport compiles each module twice (once to
name the module's file for its spec, once for its code).  On the Xen dom0 under QEMU's TCG that was
about 40 % of each task's cost (docs/testing.md, "Third round").

This module makes zipimport keep what it compiled, for those payloads only, keyed by the SHA-256
of the module's own source: the same source gives the same code object, as CPython's own
``__pycache__`` does for files.  Nothing else changes: the same modules run, from the same
payload, with the same arguments.  ``tests/debian_vm.py`` puts it on the dom0's ``sys.path``
through a ``.pth`` file.  It is a test machine's setting, like ``xpti=false``: a real host runs its
tasks on a CPU that compiles fast, and needs none of it.
"""

from __future__ import annotations

import _imp
import marshal
import os
import sys
import types
import zipimport

CACHE = "/var/cache/ansiballz-pyc"
MAGIC = b"hostagent-test-2\n"


class CachingZipImporter(zipimport.zipimporter):
    """zipimport, with compiled code kept across processes for AnsiballZ payloads."""

    def _cached(self) -> bool:
        # -W options decide what compiling warns about (or raises): the cache would hide that
        return os.path.basename(self.archive).endswith("_payload.zip") and not sys.warnoptions

    def _source_path(self, fullname: str) -> str | None:
        """The module's source entry, as ``_get_module_code`` would pick it; None for bytecode in the
        archive (which zipimport may reject and pass over): zipimport's own way then."""
        path = zipimport._get_module_path(self, fullname)  # type: ignore[attr-defined]
        for suffix, isbytecode, _ in zipimport._zip_searchorder:  # type: ignore[attr-defined]
            entry = self._files.get(path + suffix)  # type: ignore[attr-defined]
            if entry is not None:
                return None if isbytecode else str(entry[0])
        return None

    def get_filename(self, fullname: str) -> str:
        """The module's path, with its code from the cache (compiled only if it is not there).

        CPython 3.11's zipimporter answers ``get_filename`` by compiling the module
        (``_get_module_code``), and ``find_spec`` asks for it: every module of a payload was compiled
        once for its spec and once more for its code, cache or no cache.  Here the code found (or
        compiled, raising what compiling raises, from ``find_spec`` as zipimport does) is kept for the
        ``get_code`` that follows."""
        path = self._source_path(fullname) if self._cached() else None
        if path is None:
            return str(super().get_filename(fullname))
        pending: dict[str, types.CodeType] = self.__dict__.setdefault("_pending", {})
        pending[fullname] = self._code(fullname, path)
        return path

    def get_code(self, fullname: str) -> types.CodeType:
        code = self.__dict__.get("_pending", {}).pop(fullname, None)
        if code is not None:
            return code  # type: ignore[no-any-return]
        path = self._source_path(fullname) if self._cached() else None
        if path is None:  # not a payload, bytecode, or -W options: zipimport's own way
            return super().get_code(fullname)
        return self._code(fullname, path)

    def _code(self, fullname: str, path: str) -> types.CodeType:
        data = self.get_data(path)
        import hashlib  # here, not at every start of the dom0's Python: only a payload pays for it
        import importlib.util

        # what compile() depends on: the bytes (a coding cookie or BOM included), the interpreter's
        # bytecode version, and -O
        key = hashlib.sha256(b"\0".join((fullname.encode(), importlib.util.MAGIC_NUMBER,
                                          str(sys.flags.optimize).encode(), data))).hexdigest()
        cached = os.path.join(CACHE, f"{key}.bin")
        try:
            with open(cached, "rb") as handle:
                entry = handle.read()
            if entry.startswith(MAGIC):
                code = marshal.loads(entry[len(MAGIC):])
                if isinstance(code, types.CodeType):
                    _imp._fix_co_filename(code, path)  # this payload's path in tracebacks
                    return code
        except (OSError, ValueError, EOFError, TypeError):
            pass
        # as zipimport compiles a source: universal newlines, bytes in (compile reads the cookie or BOM)
        code = compile(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), path, "exec", dont_inherit=True)
        try:
            os.makedirs(CACHE, mode=0o700, exist_ok=True)
            partial = f"{cached}.{os.getpid()}.tmp"
            with open(partial, "wb") as handle:
                handle.write(MAGIC + marshal.dumps(code))
            os.replace(partial, cached)
        except OSError:
            pass
        return code


def install() -> None:
    hooks = sys.path_hooks
    for index, hook in enumerate(hooks):
        if hook is zipimport.zipimporter:
            hooks[index] = CachingZipImporter
    sys.path_importer_cache.clear()


install()
