"""A sealed two-namespace network for attack tests: an attacker and a target joined by one veth pair.

    attacker (ha-atk-N)  10.77.0.1/24 ── veth ── 10.77.0.2/24  target (ha-tgt-N)

- Spoofed sources come only from ``SPOOFED`` (10.77.1.0/24 and 10.77.2.0/24): prefixes that exist
  only here.  The target routes them back to the attacker, which blackholes them, so the target's
  SYN-ACKs to spoofed sources end in the attacker's namespace.
- The attacker's default route is a blackhole (it drops anything else) and it does not forward;
  the target has no default route at all, only 10.77.0.0/16 towards the attacker.  Neither
  namespace has a link to the host's namespace.

``Lab.capture_host_side()`` proves it: tcpdump on every interface of the host's namespace, filtered
on 10.77.0.0/16, plus a loopback canary packet that shows the capture was alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NET = "10.77.0.0/16"
ATTACKER_IP = "10.77.0.1"
TARGET_IP = "10.77.0.2"
SPOOFED = ("10.77.1.0/24", "10.77.2.0/24")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class Lab:
    attacker: str
    target: str

    def exec(self, namespace: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", namespace, *argv, check=check)

    def popen(self, namespace: str, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], text=True, **kwargs)  # type: ignore[call-overload]

    def sysctl(self, namespace: str, setting: str) -> None:
        self.exec(namespace, "sysctl", "-q", "-w", setting)

    def routes(self, namespace: str) -> str:
        return sh("ip", "-n", namespace, "route", "show", "table", "all").stdout

    def syn_flood(self, port: int, count: int, per_prefix: dict[str, float], seconds: float) -> None:
        """Send ``count`` SYNs from spoofed sources to the target's ``port`` (scapy, raw socket),
        spread evenly over about ``seconds``; ``per_prefix`` gives each /24's share."""
        script = textwrap.dedent(f"""
            import random, time
            from scapy.all import IP, TCP, conf, send
            conf.verb = 0
            random.seed(7)
            shares = {per_prefix!r}
            packets = []
            for prefix, share in shares.items():
                base = prefix.rsplit(".", 1)[0]
                for i in range(int({count} * share)):
                    packets.append(IP(src=f"{{base}}.{{random.randint(1, 254)}}", dst="{TARGET_IP}")
                                   / TCP(sport=random.randint(1024, 65535), dport={port}, flags="S",
                                         seq=random.getrandbits(32)))
            random.shuffle(packets)
            batches = 20
            size = max(1, len(packets) // batches)
            for start in range(0, len(packets), size):
                begun = time.monotonic()
                send(packets[start:start + size])
                time.sleep(max(0.0, {seconds} / batches - (time.monotonic() - begun)))
        """)
        self.exec(self.attacker, sys.executable, "-c", script)

    def udp_blast(self, port: int, seconds: float, size: int = 18) -> int:
        """Tiny UDP packets to the target as fast as one core sends them; returns how many were sent."""
        script = textwrap.dedent(f"""
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            payload, sent, end = bytes({size}), 0, time.monotonic() + {seconds}
            while time.monotonic() < end:
                for _ in range(1000):
                    s.sendto(payload, ("{TARGET_IP}", {port}))
                sent += 1000
            print(sent)
        """)
        return int(self.exec(self.attacker, sys.executable, "-c", script).stdout)

    def echo_flood(self, count: int, seconds: float) -> None:
        """``count`` ICMP echo requests to the target over about ``seconds`` (a raw socket)."""
        script = textwrap.dedent(f"""
            import socket, struct, time

            def checksum(data):
                total = sum(struct.unpack(f"!{{len(data) // 2}}H", data))
                total = (total >> 16) + (total & 0xFFFF)
                return ~(total + (total >> 16)) & 0xFFFF

            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            start = time.monotonic()
            for sequence in range({count}):
                header = struct.pack("!BBHHH", 8, 0, 0, 4242, sequence)
                packet = struct.pack("!BBHHH", 8, 0, checksum(header), 4242, sequence)
                s.sendto(packet, ("{TARGET_IP}", 0))
                time.sleep(max(0.0, start + sequence * {seconds} / {count} - time.monotonic()))
        """)
        self.exec(self.attacker, sys.executable, "-c", script)

    @contextlib.contextmanager
    def listener(self, port: int, backlog: int = 4096) -> Iterator[None]:
        """A TCP service in the target that accepts and closes every connection."""
        script = textwrap.dedent(f"""
            import socket
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("{TARGET_IP}", {port}))
            s.listen({backlog})
            print("ready", flush=True)
            while True:
                c, _ = s.accept()
                c.close()
        """)
        process = self.popen(self.target, [sys.executable, "-c", script], stdout=subprocess.PIPE)
        try:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            yield
        finally:
            process.kill()
            process.wait()

    @contextlib.contextmanager
    def normal_load(self, port: int, per_second: int) -> Iterator[subprocess.Popen[str]]:
        """Real clients from the attacker's own address: ``per_second`` full connections a second."""
        script = textwrap.dedent(f"""
            import socket, sys, time
            interval, made, failed = 1 / {per_second}, 0, 0
            start = time.monotonic()
            while True:
                try:
                    with socket.create_connection(("{TARGET_IP}", {port}), timeout=2):
                        made += 1
                except OSError:
                    failed += 1
                if (made + failed) % {per_second} == 0:
                    print(made, failed, flush=True)
                time.sleep(max(0.0, start + (made + failed) * interval - time.monotonic()))
        """)
        process = self.popen(self.attacker, [sys.executable, "-c", script], stdout=subprocess.PIPE)
        try:
            yield process
        finally:
            process.kill()
            process.wait()

    @contextlib.contextmanager
    def capture_host_side(self, log: Path) -> Iterator[list[int]]:
        """tcpdump in the host's namespace on every interface while the block runs.  Yields a list that
        afterwards holds [test packets seen, canary packets seen]."""
        canary_port = _free_udp_port()
        with log.open("w") as output:
            process = subprocess.Popen(
                ["tcpdump", "-i", "any", "-n", "-l", "--immediate-mode",
                 f"net {NET} or (udp and host 127.0.0.1 and port {canary_port})"],
                stdout=output, stderr=subprocess.PIPE, text=True)
        counts: list[int] = []
        try:
            _wait_listening(process)
            yield counts
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as canary:
                canary.sendto(b"canary", ("127.0.0.1", canary_port))
            time.sleep(1)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
        seen = log.read_text().splitlines()
        counts += [sum("10.77." in line for line in seen), sum(f".{canary_port}:" in line for line in seen)]


def _wait_listening(process: subprocess.Popen[str]) -> None:
    assert process.stderr is not None
    line = process.stderr.readline()  # "tcpdump: data link type LINUX_SLL2" then "listening on any ..."
    while line and "listening on" not in line:
        line = process.stderr.readline()
    assert "listening on" in line, "tcpdump did not start"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    suffix = f"{os.getpid() % 100000}"
    net = Lab(f"ha-atk-{suffix}", f"ha-tgt-{suffix}")
    try:
        for namespace in (net.attacker, net.target):
            sh("ip", "netns", "add", namespace)
            sh("ip", "-n", namespace, "link", "set", "lo", "up")
        sh("ip", "link", "add", "veth-a", "netns", net.attacker, "type", "veth", "peer", "name", "veth-t",
           "netns", net.target)
        sh("ip", "-n", net.attacker, "addr", "add", f"{ATTACKER_IP}/24", "dev", "veth-a")
        sh("ip", "-n", net.target, "addr", "add", f"{TARGET_IP}/24", "dev", "veth-t")
        for namespace, link in ((net.attacker, "veth-a"), (net.target, "veth-t")):
            sh("ip", "-n", namespace, "link", "set", link, "up")
        net.sysctl(net.attacker, "net.ipv4.ip_forward=0")
        sh("ip", "-n", net.attacker, "route", "add", "blackhole", "default")
        for prefix in SPOOFED:
            sh("ip", "-n", net.attacker, "route", "add", "blackhole", prefix)
        # one covering route, so that a blackhole for a single source prefix is a more specific route
        sh("ip", "-n", net.target, "route", "add", NET, "via", ATTACKER_IP)
        yield net
    finally:
        for namespace in (net.attacker, net.target):
            for pid in sh("ip", "netns", "pids", namespace, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", namespace, check=False)
