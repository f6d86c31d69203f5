"""The cost of reading the maintenance journals as they accumulate (issue #34).

The daemon reads every journal several times per 5 s tick (quarantine, reports, the active one,
the job reconciliation) and ``report`` reads them too.  Before issue #34 each read parsed every
file again: 17 ms at 100 journals, 179 ms at 1,000, 744 ms at 4,000.  Now a journal whose file is
unchanged (inode, mtime, size: every write is a new file) comes from memory, and final journals
are pruned ``retention_days`` after they ended.  Side by side in one process, for each size:

- ``parse every file`` (the old cost: a fresh process's first scan, or the cache cleared);
- ``unchanged files`` (the daemon's steady state: only ``lstat`` per file; a file changed in the last
  ``journal.SETTLED`` s is always read, timestamps being coarse);
- ``after pruning`` (the same directory after ``JournalStore.prune`` at 90 days, as the daemon
  does hourly; the journals are spread over two years).

    .venv/bin/python bench/bench_journals.py [--sizes 100,1000,4000] [--smoke]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hostagent.maintenance import journal as journal_module  # noqa: E402
from hostagent.maintenance.journal import Journal, JournalStore  # noqa: E402

DAY = 86400.0


def fill(directory: Path, count: int, now: float) -> JournalStore:
    store = JournalStore(directory)
    directory.mkdir(parents=True)
    for index in range(count):
        ended = now - (index / max(count, 1)) * 730 * DAY
        journal = Journal.new(ended - 600, "kernel", [f"g{i}" for i in range(8)])
        journal = journal.advance("preflight", now=ended - 600).advance("cancelled", now=ended).mark_sent("report")
        store._write(journal)
    return store


def timed(call: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,4000")
    parser.add_argument("--smoke", action="store_true", help="small sizes, one repeat: that it runs (make test)")
    args = parser.parse_args()
    sizes = [20] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.smoke else 5
    work = Path(tempfile.mkdtemp(prefix="hajournals-"))
    rows = []
    try:
        for size in sizes:
            now = time.time()
            store = fill(work / str(size), size, now)
            time.sleep(journal_module.SETTLED + 0.1)  # journals this new are never taken from memory

            def cold(store: JournalStore = store, size: int = size) -> None:
                journal_module._parsed.clear()
                assert len(store.all()) == size

            def warm(store: JournalStore = store, size: int = size) -> None:
                assert len(store.all()) == size

            parse_all = timed(cold, repeat)
            store.all()
            unchanged = timed(warm, repeat)
            kept = size - len(store.prune(90 * DAY, now))
            store.all()
            pruned = timed(lambda store=store, kept=kept: len(store.all()) == kept or sys.exit("lost"), repeat)
            rows.append((size, parse_all, unchanged, kept, pruned))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'journals':>9} {'parse every file':>17} {'unchanged files':>16} {'ratio':>6} {'kept':>6} "
          f"{'after pruning':>14}")
    for size, parse_all, unchanged, kept, pruned in rows:
        print(f"{size:>9} {parse_all:>14.1f} ms {unchanged:>13.1f} ms {unchanged / parse_all:>6.2f} {kept:>6} "
              f"{pruned:>11.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
