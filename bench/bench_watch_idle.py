"""Idle footprint of `hostagent watch` on the live machine: RSS and CPU over a quiet period, with
alerts enabled and delivered to a real SMTP sink (aiosmtpd on loopback, in this process), the
courier thread running, the RPC socket open, and default check intervals.

Run: .venv/bin/python bench/bench_watch_idle.py [SECONDS]   (default 600)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aiosmtpd.controller import Controller

REPO = Path(__file__).resolve().parent.parent


class Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append(envelope.content)  # type: ignore[attr-defined]
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 600.0
    sink = Sink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hostagent.toml"
        # default intervals (md 10 s, hung 5 s, net 30 s, smart 30 min); alerts on, to the sink
        config.write_text(f'[agent]\nrpc_socket = "{tmp}/rpc.sock"\n[alerts.smtp]\nhost = "127.0.0.1"\n'
                          f'port = {smtp.port}\n[[alerts.routes]]\nto = ["ops@example.com"]\n')
        env = {**os.environ, "HOSTAGENT_CONFIG": str(config)}
        proc = subprocess.Popen([sys.executable, "-m", "hostagent", "watch", "--state-dir", f"{tmp}/state"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        watcher = psutil.Process(proc.pid)
        time.sleep(5)  # past start-up and the first full cycle
        start_cpu = watcher.cpu_times()
        start = time.monotonic()
        peak_rss = 0
        samples = []
        while time.monotonic() - start < seconds:
            rss = watcher.memory_info().rss
            peak_rss = max(peak_rss, rss)
            samples.append(rss)
            time.sleep(1)
        end_cpu = watcher.cpu_times()
        elapsed = time.monotonic() - start
        threads = watcher.num_threads()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    smtp.stop()
    cpu = (end_cpu.user + end_cpu.system - start_cpu.user - start_cpu.system) / elapsed
    print(f"# hostagent watch idle footprint over {elapsed:.0f} s (default intervals, alerts on, "
          f"{len(sink.messages)} mail(s) delivered to the sink, {threads} threads)\n")
    print("| measure | value | goal |")
    print("|---|---|---|")
    print(f"| peak RSS | {peak_rss / 2**20:.1f} MiB | under 40 MB |")
    print(f"| median RSS | {sorted(samples)[len(samples) // 2] / 2**20:.1f} MiB | |")
    print(f"| CPU of one core | {cpu:.3%} | under 0.5 % |")


if __name__ == "__main__":
    main()
