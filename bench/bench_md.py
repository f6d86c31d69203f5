"""md benchmark: our mdstat parse against pymdstat's, in-process and whole-process.

Run: make bench   (or .venv/bin/python bench/bench_md.py)
     .venv/bin/python bench/bench_md.py --against REV   (also: this checkout against REV, in turn)
Prints a Markdown report; docs/benchmarks.md holds the figures of a recorded run.

The whole-process figures come from a wheel installed into a fresh venv with its bytecode
compiled, as the Ansible role installs the agent: the development venv's editable finder and a
``PYTHONDONTWRITEBYTECODE`` environment would measure the checkout, not the plugin.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pymdstat import MdStat  # noqa: E402

from checks import md  # noqa: E402
from hostagent.inventory import merge_array  # noqa: E402
from hostagent.sources.mdstat import parse_mdstat  # noqa: E402


def synthetic_mdstat(arrays: int = 64, members_per_array: int = 4) -> str:
    """64 arrays x 4 members: raid1/5/6/10 mixed, some degraded, some rebuilding, some with spares."""
    lines = ["Personalities : [raid1] [raid6] [raid5] [raid4] [raid10] "]
    disk = 0
    for n in range(arrays):
        kind = ("raid1", "raid5", "raid6", "raid10")[n % 4]
        members, slot_map = [], ""
        for i in range(members_per_array):
            name = f"sd{chr(97 + disk // 26 % 26)}{chr(97 + disk % 26)}{n % 8 + 1}"
            disk += 1
            flag = ""
            if kind == "raid1" and i >= 2:
                flag = "(S)"
            elif n % 7 == 3 and i == 1:
                flag = "(F)"
            members.append(f"{name}[{i}]{flag}")
            if not flag.startswith("(S"):
                slot_map += "_" if flag else "U"
        raid_disks = len(slot_map)
        working = slot_map.count("U")
        lines.append(f"md{n} : active {kind} " + " ".join(members))
        tail = {
            "raid1": "",
            "raid5": " level 5, 512k chunk, algorithm 2",
            "raid6": " level 6, 512k chunk, algorithm 2",
            "raid10": " 512K chunks 2 near-copies",
        }[kind]
        lines.append(f"      {976510976 + n} blocks super 1.2{tail} [{raid_disks}/{working}] [{slot_map}]")
        if n % 5 == 1:
            lines.append("      [====>................]  recovery = 21.3% (208000000/976510976) "
                         "finish=93.1min speed=137500K/sec")
        lines.append("      bitmap: 1/8 pages [4KB], 65536KB chunk")
        lines.append("")
    lines.append("unused devices: <none>")
    return "\n".join(lines) + "\n"


def ours_parse(path: Path) -> int:
    return len(parse_mdstat(path.read_text(), str(path)).arrays)


def ours(path: Path) -> int:
    text = path.read_text()
    config = md.Config()
    found = 0
    for array in parse_mdstat(text, str(path)).arrays:
        found += len(md.evaluate(merge_array(array.name, array, None), config))
    return found


def theirs(path: Path) -> int:
    with contextlib.redirect_stdout(io.StringIO()):  # pymdstat prints lines of degraded arrays
        return len(MdStat(str(path)).get_stats()["arrays"])


def per_call_ms(*funcs: Callable[[], object], repeat: int = 31, number: int = 50) -> list[float]:
    """For each function, the median over `repeat` rounds of the mean time per call, in ms.  The
    functions take turns round by round, so a change in the machine's load hits them alike."""
    rounds: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeat):
        for func, times in zip(funcs, rounds, strict=True):
            start = time.perf_counter()
            for _ in range(number):
                func()
            times.append((time.perf_counter() - start) / number * 1000)
    return [statistics.median(times) for times in rounds]


def process_ms(argv: list[str], runs: int = 21, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        # run outside the checkout: from it, ``-m hostagent`` would import the checkout, not the build
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env,
                       cwd=tempfile.gettempdir())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def installed_agent(tmp: Path, source: Path = REPO) -> Path:
    """``hostagent`` from ``source``'s wheel in a fresh venv, bytecode compiled (as pip leaves it)."""
    def run(*argv: str | Path) -> str:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True, env=env).stdout

    python = tmp / "venv/bin/python"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "wheel", source)
    run(sys.executable, "-m", "venv", "--without-pip", tmp / "venv")
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
        next((tmp / "wheel").glob("hostagent-*.whl")))
    run(python, "-m", "compileall", "-q", site)
    return python


def fidelity() -> list[tuple[str, str]]:
    """Fixtures where pymdstat fails or disagrees with us on the arrays and their members."""
    problems = []
    for path in sorted((REPO / "tests/fixtures/mdstat").rglob("*")):
        if not path.is_file():
            continue
        arrays = parse_mdstat(path.read_text(errors="replace")).arrays
        expected = {a.name: {m.device for m in a.members} for a in arrays}
        name = str(path.relative_to(REPO / "tests/fixtures/mdstat"))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                got = MdStat(str(path)).get_stats()["arrays"]
        except Exception as err:
            problems.append((name, f"raises {type(err).__name__}: {err}"))
            continue
        got_members = {a: set(v.get("components", {})) for a, v in got.items()}
        if got_members != expected:
            missing = sorted(set(expected) - set(got_members))
            wrong = sorted(a for a in expected if a in got_members and got_members[a] != expected[a])
            problems.append((name, f"wrong result: arrays missed {missing or '-'}, members wrong in {wrong or '-'}"))
    return problems


def against(revision: str, runs: int = 21) -> None:
    """This checkout's whole process against ``revision``'s, built alike and timed in turn."""
    hosts = ("healthy-mirror", "worn-disk", "syn-flood")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree), revision], check=True)
        try:
            builds = {"before": installed_agent(Path(tmp) / "before", tree),
                      "after": installed_agent(Path(tmp) / "after")}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(runs):
            for name, python in builds.items():
                for host in hosts:
                    argv = [str(python), "-m", "hostagent", "check", "--root", str(REPO / "examples/hosts" / host)]
                    times.setdefault((name, host), []).append(process_ms(argv, runs=1, env=env))
    print(f"| host | before ({revision}) | after | ratio |\n|---|---|---|---|")
    for host in hosts:
        before, after = (statistics.median(times[(name, host)]) for name in ("before", "after"))
        print(f"| {host} | {before:.1f} ms | {after:.1f} ms | {after / before:.2f} |")


def main() -> None:
    if sys.argv[1:2] == ["--against"] and len(sys.argv) == 3:
        against(sys.argv[2])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mdstat"
        path.write_text(synthetic_mdstat())
        parsed = parse_mdstat(path.read_text())
        members = sum(len(a.members) for a in parsed.arrays)
        assert len(parsed.arrays) == 64 and members == 256, (len(parsed.arrays), members)
        findings = ours(path)
        their_count = theirs(path)
        assert ours_parse(path) == their_count == 64, (ours_parse(path), their_count)
        parse_ms, theirs_ms, evaluate_ms = per_call_ms(
            lambda: ours_parse(path), lambda: theirs(path), lambda: ours(path))

        agent = installed_agent(Path(tmp))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        hosts = sorted(p for p in (REPO / "examples/hosts").iterdir() if (p / "proc/mdstat").is_file())
        per_host = {host.name: process_ms([str(agent), "-m", "hostagent", "check", "--root", str(host)], env=env)
                    for host in hosts}
        mdstat_path = str(REPO / "examples/hosts/healthy-mirror/proc/mdstat")
        pymdstat_ms = process_ms([sys.executable, "-c", f"from pymdstat import MdStat; MdStat({mdstat_path!r})"],
                                 env=env)
        bare_ms = process_ms([str(agent), "-c", "pass"], env=env)

    print(f"# md benchmark ({platform.python_implementation()} {platform.python_version()}, {platform.machine()})\n")
    print(f"Synthetic /proc/mdstat: {len(parsed.arrays)} arrays, {members} members; "
          f"we report {findings} findings, pymdstat returns {their_count} arrays.\n")
    ratio = parse_ms / theirs_ms
    slowest = max(per_host.values())
    print("| measurement | hostagent | pymdstat | ratio (hostagent / pymdstat) |")
    print("|---|---|---|---|")
    print(f"| in-process read + parse, 64 arrays | {parse_ms:.3f} ms | {theirs_ms:.3f} ms | {ratio:.2f} |")
    print(f"| in-process read + parse + evaluate (ours only) | {evaluate_ms:.3f} ms | | |")
    for name, ms in per_host.items():
        print(f"| whole process `hostagent check --root examples/hosts/{name}` | {ms:.1f} ms | "
              f"{pymdstat_ms:.1f} ms (parse only) | {ms / pymdstat_ms:.2f} |")
    print(f"| bare `python -c pass` (floor) | {bare_ms:.1f} ms | | |\n")
    print(f"Goal 1, in-process parse at least as fast as pymdstat: **{'met' if ratio <= 1 else 'NOT met'}** "
          f"(ratio {ratio:.2f}).")
    print(f"Goal 2, every example host's whole process under 120 ms: **{'met' if slowest < 120 else 'NOT met'}** "
          f"(slowest {slowest:.1f} ms).\n")
    problems = fidelity()
    print(f"pymdstat on the {sum(1 for p in (REPO / 'tests/fixtures/mdstat').rglob('*') if p.is_file())} "
          f"real fixtures: {len(problems)} fail or disagree with the arrays and members we verified:\n")
    for name, problem in problems:
        print(f"- `{name}`: {problem}")


if __name__ == "__main__":
    main()
