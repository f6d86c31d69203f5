"""A scriptable stand-in for Xen's ``xl``, replaying a real Xen 4.17 dom0's output formats.

``python -m tests.fakexl install DIR`` is not needed: ``install(directory, state)`` writes an ``xl``
executable into ``directory`` that runs this module with ``FAKEXL_STATE`` naming a JSON file:

- ``domains``: name -> {"domid", "flags" (xl list's state column), "memkb", "long" (whether
  ``xl list -l`` shows it: libxl skips a domain whose stored configuration it cannot read)};
- ``fail``: "<verb>:<name>" -> how that call goes wrong: ``error`` (exit 1, the domain as it was),
  ``suspend`` (a partial image is written, the domain is left suspended, exit 1), ``hang`` (as
  suspend, then the process sleeps until killed; for ``restore``: the domain is built paused, then
  the process sleeps until killed);
- ``calls``: every call, appended.

``xl list -l`` prints the fixture's real JSON for each domain shown, ``xl list`` its real columns,
``xl save`` writes an image (JSON) and destroys the domain, ``xl restore`` and ``xl create``
create one, ``xl domname ID`` prints the exact name; ``xl start`` is not a verb of xl (hostagent's
``start`` is ``xl create``).
Every call holds an flock on the state file, as parallel saves run parallel ``xl`` processes.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "xen"
HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"


def install(directory: Path, state: Path, domains: dict[str, dict[str, Any]]) -> Path:
    """An ``xl`` in ``directory`` bound to ``state``, which starts with these domains."""
    directory.mkdir(parents=True, exist_ok=True)
    next_id = max([d.get("domid", 0) for d in domains.values()] + [0]) + 1
    full = {}
    for name, domain in domains.items():
        full[name] = {"domid": domain.get("domid") or next_id, "flags": domain.get("flags", "-b----"),
                      "memkb": domain.get("memkb", 98304), "long": domain.get("long", True)}
        next_id = max(next_id, full[name]["domid"]) + 1
    state.write_text(json.dumps({"domains": full, "fail": {}, "calls": [], "next": next_id}))
    script = directory / "xl"
    repo = Path(__file__).resolve().parent.parent
    script.write_text(f"#!{sys.executable} -I\nimport sys\nsys.path.insert(0, {str(repo)!r})\n"
                      f"from tests.fakexl import main\nsys.exit(main(sys.argv[1:], {str(state)!r}))\n")
    script.chmod(0o755)
    return script


@contextlib.contextmanager
def locked(state: Path) -> Iterator[dict[str, Any]]:
    """The state, read and written back under an flock (tests change it the same way)."""
    with open(state, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        data = json.load(handle)
        yield data
        handle.seek(0)
        handle.truncate()
        json.dump(data, handle)


def read(state: Path) -> dict[str, Any]:
    with locked(state) as data:
        return copy.deepcopy(data)


def _long_entry(name: str, domain: dict[str, Any]) -> dict[str, Any]:
    template = json.loads((FIXTURES / "xl-list-l.json").read_text())[1]
    entry = copy.deepcopy(template)
    entry["domid"] = domain["domid"]
    entry["config"]["c_info"]["name"] = name
    entry["config"]["c_info"]["uuid"] = f"0aae4b58-4e45-4425-b5d2-{domain['domid']:012x}"
    entry["config"]["b_info"]["max_memkb"] = domain["memkb"]
    return entry


def _dom0() -> dict[str, Any]:
    return json.loads((FIXTURES / "xl-list-l.json").read_text())[0]  # type: ignore[no-any-return]


def main(argv: list[str], state_path: str) -> int:
    state = Path(state_path)
    verb = argv[0] if argv else ""
    hang = False
    with locked(state) as data:
        data["calls"].append(argv)
        domains: dict[str, dict[str, Any]] = data["domains"]
        code, out, err, hang = _run(verb, argv[1:], domains, data)
    if out:
        sys.stdout.write(out)
    if err:
        sys.stderr.write(err)
    sys.stdout.flush()
    if hang:  # a save that never ends on its own, as a hung xl save: the backend's abort kills it (SIGKILL),
        time.sleep(3600)  # and the hour only bounds a process a broken test might leave behind
    return code


def _run(verb: str, args: list[str], domains: dict[str, dict[str, Any]],
         data: dict[str, Any]) -> tuple[int, str, str, bool]:
    fail = data["fail"]
    if verb == "list" and args[:1] == ["-l"]:
        shown = [_long_entry(n, d) for n, d in domains.items() if d["long"] and (len(args) < 2 or n == args[1])]
        if len(args) > 1 and not shown:
            return 1, "", f"{args[1]} is an invalid domain identifier (rc=-6)\n", False
        return 0, (json.dumps([_dom0(), *shown], indent=4) + "\n") if len(args) < 2 else json.dumps(shown), "", False
    if verb == "list":
        lines = [HEADER, f"{'Domain-0':<44}{0:>3}{1024:>6}{2:>6}     r-----{83.8:>12}\n"]
        lines += [f"{n:<44}{d['domid']:>3}{d['memkb'] // 1024:>6}{1:>6}     {d['flags']}{1.0:>12}\n"
                  for n, d in domains.items()]
        return 0, "".join(lines), "", False
    if verb == "pci-list":
        return 0, "", "", False
    if verb == "domname":  # the exact name, from xenstore: trailing spaces too, and for domains -l omits
        found = [n for n, d in domains.items() if str(d["domid"]) == (args[0] if args else "")]
        return (0, f"{found[0]}\n", "", False) if found else (1, "", "Can't get domain name of domain id\n", False)
    name = args[0] if args else ""
    how = fail.pop(f"{verb}:{name}", None)
    if verb == "save":
        image = args[1]
        if name not in domains:
            return 1, "", f"{name} is an invalid domain identifier\n", False
        if how == "error":
            return 1, "Saving to " + image + " new xl format (info 0x3/0x0/1353)\n", "xc: error: injected\n", False
        if how in ("suspend", "hang"):
            Path(image).write_text('{"partial": true}')
            domains[name]["flags"] = "---s--"
            return (1, "", "xc: error: Save failed (injected)\n", False) if how == "suspend" else (0, "", "", True)
        Path(image).write_text(json.dumps({"name": name, "memkb": domains[name]["memkb"]}))
        del domains[name]
        return 0, f"Saving to {image} new xl format (info 0x3/0x0/1353)\nxc: info: Saving domain {name}\n", "", False
    if verb == "restore":
        try:
            image = json.loads(Path(name).read_text())
        except (OSError, ValueError):
            return 1, "", f"xl restore: cannot read {name}\n", False
        if how == "error" or image.get("partial"):
            return 1, "", "xc: error: Failed to restore: invalid image (injected or partial)\n", False
        if image["name"] in domains:
            return 1, "", f"domain with name \"{image['name']}\" already exists.\n", False
        if how == "hang":  # built paused, then its memory loads for longer than anyone waits
            domains[image["name"]] = {"domid": _next(data), "flags": "--p---", "memkb": image["memkb"], "long": True}
            return 0, "", "", True
        domains[image["name"]] = {"domid": _next(data), "flags": "-b----", "memkb": image["memkb"], "long": True}
        return 0, "", "", False
    if verb == "create":
        match = re.search(r"""^\s*name\s*=\s*["']([^"']+)["']""", Path(name).read_text(), re.M)
        guest = match.group(1) if match else ""
        if how == "error" or not guest:
            return 1, "", "Parsing config from ...\nlibxl: error: injected\n", False
        if guest in domains:
            return 1, "", f"libxl: error: domain with name \"{guest}\" already exists.\n", False
        domains[guest] = {"domid": _next(data), "flags": "-b----", "memkb": 98304, "long": True}
        return 0, "", "", False
    if verb in ("shutdown", "destroy"):
        if name not in domains:
            return 1, "", f"{name} is an invalid domain identifier (rc=-6)\n", False
        if how == "error":
            return 1, "", "libxl: error: injected\n", False
        if how != "ignore":  # ignore: a guest that does not react to the shutdown request
            del domains[name]
        return 0, "", "", False
    if verb == "unpause":
        if name in domains:
            domains[name]["flags"] = domains[name]["flags"].replace("p", "-")
        return 0, "", "", False
    return 1, "", f"fakexl: {verb} is not scripted\n", False


def _next(data: dict[str, Any]) -> int:
    data["next"] += 1
    return int(data["next"])


def start(state: Path, name: str, flags: str = "-b----", long: bool = True) -> None:
    """A domain started by someone else (a customer's panel, an autostart)."""
    with locked(state) as data:
        data["domains"][name] = {"domid": _next(data), "flags": flags, "memkb": 98304, "long": long}


def fail(state: Path, verb: str, name: str, how: str) -> None:
    with locked(state) as data:
        data["fail"][f"{verb}:{name}"] = how


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], sys.argv[1]))
