"""Runs inside the test VM: executes commands sent as JSON lines over a serial port.

Request:  {"id": 1, "cmd": "mdadm --detail /dev/md0", "timeout": 60}
Response: {"id": 1, "rc": 0, "stdout": "...", "stderr": "..."}  (rc 124 on timeout)
"""

import json
import os
import subprocess
import sys
import termios
import tty


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
            try:
                proc = subprocess.run(["/bin/sh", "-c", request["cmd"]], capture_output=True,
                                      timeout=request.get("timeout", 60), stdin=subprocess.DEVNULL)
                rc, out, err = proc.returncode, proc.stdout, proc.stderr
            except subprocess.TimeoutExpired as exc:
                rc, out, err = 124, exc.stdout or b"", (exc.stderr or b"") + b"\n[timed out]"
            send({"id": request["id"], "rc": rc, "stdout": out.decode(errors="replace"),
                  "stderr": err.decode(errors="replace")})


if __name__ == "__main__":
    main(sys.argv[1])
