"""Runs inside the test VM: executes commands sent as JSON lines over a serial port.

Request:  {"id": 1, "cmd": "mdadm --detail /dev/md0", "timeout": 60}
Response: {"id": 1, "rc": 0, "stdout": "...", "stderr": "..."}  (rc 124 on timeout)
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import termios
import tty


def run(cmd: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run cmd; on timeout kill its process group and answer 124 without waiting on D-state children."""
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            out, err = b"", b""  # stuck in D state: leave it
        return 124, out or b"", (err or b"") + f"[timed out after {timeout:g} s]".encode()


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
