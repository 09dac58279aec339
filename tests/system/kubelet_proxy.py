"""A TCP proxy for kubelet.py: Services whose backend is outside the cluster's network namespace, and
`port_forward` from the test into it.

    python kubelet_proxy.py (--listen-fd FD | --listen HOST:PORT) (--to HOST:PORT | --to-unix PATH)

A socket's network namespace is the one it was created in: `--listen-fd` serves a socket the parent made
in the machine's namespace while this process connects inside the cluster's (kubectl port-forward), and
`--listen` inside the cluster's to a Unix socket on the machine (a Service in front of a server the
test started itself). Only the standard library; one thread per direction of each connection.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser()
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen-fd", type=int)
    where.add_argument("--listen")
    to = parser.add_mutually_exclusive_group(required=True)
    to.add_argument("--to")
    to.add_argument("--to-unix")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.listen_fd is not None:
        server = socket.socket(fileno=args.listen_fd)
    else:
        host, port = args.listen.rsplit(":", 1)
        server = socket.create_server((host, int(port)), reuse_port=False, backlog=128)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        try:
            if args.to_unix:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(args.to_unix)
            else:
                host, port = args.to.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)), timeout=10)
                upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    main()
