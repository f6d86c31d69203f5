"""The audit journal: rotation by size under a lock, and reading across rotated and torn files."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from hostagent.actions import AUDIT_FILE, AuditLog, read_audit


def test_rotation_keeps_the_configured_number_of_files_and_reads_across_them(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, max_bytes=4096, keep=2)
    for number in range(200):  # about 150 bytes each: several rotations
        audit.record({"event": "test", "n": number, "pad": "x" * 40})
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(AUDIT_FILE) and not p.name.endswith("lock"))
    assert names == [AUDIT_FILE, f"{AUDIT_FILE}.1", f"{AUDIT_FILE}.2"]
    assert all(p.stat().st_size <= 4096 + 200 for p in tmp_path.glob(f"{AUDIT_FILE}*") if p.suffix != ".lock")
    last = read_audit(tmp_path, 30)
    assert [entry["n"] for _, entry in last if entry] == list(range(170, 200))  # in order, across two files


def test_keep_zero_keeps_no_old_file(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, max_bytes=4096, keep=0)
    for number in range(100):
        audit.record({"event": "test", "n": number, "pad": "x" * 40})
    assert not (tmp_path / f"{AUDIT_FILE}.1").exists()
    assert read_audit(tmp_path, 1)[0][1]["n"] == 99  # type: ignore[index]


def _write(directory: str, worker: int) -> None:
    audit = AuditLog(directory, max_bytes=8192, keep=50)
    for number in range(100):
        audit.record({"event": "test", "worker": worker, "n": number})


def test_concurrent_writers_rotating_lose_no_record_and_tear_no_line(tmp_path: Path) -> None:
    processes = [multiprocessing.Process(target=_write, args=(str(tmp_path), w)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    records = read_audit(tmp_path, 10_000)
    assert all(entry is not None for _, entry in records)
    assert sorted((e["worker"], e["n"]) for _, e in records if e) == [(w, n) for w in range(4) for n in range(100)]


def test_a_torn_line_is_read_as_torn_and_the_next_record_starts_on_its_own_line(tmp_path: Path) -> None:
    (tmp_path / AUDIT_FILE).write_bytes(b'{"event": "a"}\n{"event": "to')
    AuditLog(tmp_path).record({"event": "b"})
    lines = [(line, entry) for line, entry in read_audit(tmp_path, 10)]
    assert [entry["event"] if entry else None for _, entry in lines] == ["a", None, "b"]
    assert json.loads(lines[2][0])["event"] == "b"
