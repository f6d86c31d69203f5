"""Runs inside the test VM: executes commands sent as JSON lines over a serial port.

Request:  {"id": 1, "cmd": "mdadm --detail /dev/md0", "timeout": 60}
Response: {"id": 1, "rc": 0, "stdout": "...", "stderr": "..."}  (rc 124 on timeout, with the output
          so far and the kernel stacks of the tasks blocked in D state)
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import termios
import tty


def blocked_tasks() -> str:
    """Kernel stacks of the tasks in uninterruptible sleep (D state), and the kernel log's tail."""
    report = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
            if stat[stat.rindex(")") + 2] != "D":
                continue
            with open(f"/proc/{entry}/stack") as handle:
                report.append(f"pid {entry} {stat[stat.index('(') + 1:stat.rindex(')')]} in D state:\n{handle.read()}")
    return "\n".join(report or ["no task in D state"]) + "\nkernel log:\n" + kernel_log_tail()


def kernel_log_tail(lines: int = 40) -> str:
    """The last ``lines`` records of the kernel log, read without blocking from /dev/kmsg."""
    records = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the ring buffer overwrote a record while we read
                continue
            records.append(record.split(";", 1)[-1].split("\n", 1)[0])
    finally:
        os.close(fd)
    return "\n".join(records[-lines:])


def run(cmd: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run cmd; on timeout report the blocked tasks, kill its process group and answer 124 with the
    output so far, without waiting on children stuck in D state."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            note = b""
        except subprocess.TimeoutExpired:
            note = f"[timed out after {timeout:g} s]\n{blocked_tasks()}".encode()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)  # a child in D state stays: leave it
            rc = 124
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read() + note


def main(port: str) -> None:
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B115200
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    reader = os.fdopen(fd, "rb", buffering=0)
    writer = os.fdopen(os.dup(fd), "wb", buffering=0)

    def send(obj: dict) -> None:
        writer.write(json.dumps(obj).encode() + b"\n")

    send({"ready": True})
    buffer = b""
    while True:
        chunk = reader.read(4096)
        if not chunk:
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.strip():
                continue
            request = json.loads(line)
            rc, out, err = run(request["cmd"], request.get("timeout", 60))
            send({"id": request["id"], "rc": rc, "stdout": out.decode(errors="replace"),
                  "stderr": err.decode(errors="replace")})


if __name__ == "__main__":
    main(sys.argv[1])
