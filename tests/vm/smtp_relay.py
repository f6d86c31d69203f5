"""Run by QEMU's guestfwd for each guest connection: pipes it to a TCP server on host loopback.

Usage (as QEMU's cmd:): python3 smtp_relay.py HOST PORT   (stdin/stdout are the guest's connection)
"""

import os
import select
import socket
import sys


def main() -> None:
    server = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    peers = {0: server.fileno(), server.fileno(): 1}
    open_fds = [0, server.fileno()]
    while open_fds:
        ready, _, _ = select.select(open_fds, [], [])
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                open_fds.remove(fd)
                if fd == 0:
                    server.shutdown(socket.SHUT_WR)
                else:
                    os.close(1)
                    return
                continue
            if fd == 0:
                server.sendall(data)
            else:
                os.write(peers[fd], data)


if __name__ == "__main__":
    main()
