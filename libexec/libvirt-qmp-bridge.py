#!/usr/bin/python3
"""QMP on a UNIX socket for a libvirt-managed QEMU, through libvirt's monitor passthrough.

    libvirt-qmp-bridge.py [--connect URI] DOMAIN SOCKET

libvirt holds the domain's QMP monitor; forksnap talks to QEMU through libvirt's
qemuMonitorCommand (commands) and qemuMonitorEventRegister (events), which this bridge offers as
an ordinary QMP server on SOCKET (mode 0600): a greeting, qmp_capabilities answered locally,
commands answered in order (several may be in flight: they are queued, unlike
virt-qemu-qmp-proxy, which takes one at a time and stalls on pipelined input), every QEMU event
forwarded with QEMU's own timestamp.

It prints "ready" on stdout once SOCKET listens, and exits when its standard input closes (its
owner died or is done), when the domain stops, or on SIGTERM. Run it with Debian's
/usr/bin/python3: the libvirt module is packaged for that interpreter (python3-libvirt).
"""
import argparse
import json
import os
import queue
import signal
import socket
import sys
import threading

import libvirt
import libvirt_qemu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", "-c", default="qemu:///system")
    parser.add_argument("domain")
    parser.add_argument("socket")
    args = parser.parse_args()

    libvirt.registerErrorHandler(lambda _opaque, _error: None, None)
    libvirt.virEventRegisterDefaultImpl()
    conn = libvirt.open(args.connect)
    dom = conn.lookupByName(args.domain)
    if not dom.isActive():
        fail("domain %s is not running" % args.domain)
    version = conn.getVersion()  # the QEMU version for the QEMU driver: major * 1e6 + minor * 1e3 + micro
    greeting = {"QMP": {"version": {"qemu": {"major": version // 1000000 % 1000, "minor": version // 1000 % 1000,
                                              "micro": version % 1000}, "package": "libvirt-passthrough"},
                        "capabilities": []}}

    clients = []
    clients_lock = threading.Lock()

    class Client:
        def __init__(self, sock):
            self.sock = sock
            self.write_lock = threading.Lock()
            self.negotiated = False
            self.commands = queue.Queue()
            self.alive = True

        def send(self, obj):
            data = (json.dumps(obj) + "\r\n").encode("utf-8")
            with self.write_lock:
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.alive = False

    def on_event(_conn, _dom, event, secs, usecs, details, _opaque):
        message = {"event": event, "timestamp": {"seconds": secs, "microseconds": usecs}}
        if details is not None:
            # libvirt hands the event's data over as JSON text, QMP clients expect the object.
            if isinstance(details, str):
                try:
                    details = json.loads(details)
                except ValueError:
                    pass
            message["data"] = details
        with clients_lock:
            targets = [c for c in clients if c.negotiated and c.alive]
        for client in targets:
            client.send(message)

    def on_lifecycle(_conn, _dom, event, _detail, _opaque):
        if event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED):
            os._exit(0)

    libvirt_qemu.qemuMonitorEventRegister(conn, dom, None, on_event, None, 0)
    conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)

    def run_commands(client):
        while True:
            line = client.commands.get()
            if line is None:
                return
            try:
                command = json.loads(line)
            except ValueError as error:
                client.send({"error": {"class": "GenericError", "desc": "JSON parse error: %s" % error}})
                continue
            ident = command.pop("id", None)
            if command.get("execute") == "qmp_capabilities":
                client.negotiated = True
                reply = {"return": {}}
            else:
                try:
                    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(command), 0))
                except libvirt.libvirtError as error:
                    reply = {"error": {"class": "GenericError", "desc": "libvirt: %s" % error.get_error_message()}}
                reply.pop("id", None)
            if ident is not None:
                reply["id"] = ident
            client.send(reply)

    def serve(client):
        worker = threading.Thread(target=run_commands, args=(client,), daemon=True)
        worker.start()
        client.send(greeting)
        buffer = b""
        try:
            while True:
                chunk = client.sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                # QMP input is a stream of JSON objects; forksnap sends one per line.
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        client.commands.put(line.decode("utf-8"))
        except OSError:
            pass
        client.alive = False
        client.commands.put(None)
        with clients_lock:
            clients.remove(client)
        client.sock.close()

    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    server.bind(args.socket)
    os.umask(old_umask)
    server.listen(8)

    def accept_loop():
        while True:
            sock, _ = server.accept()
            client = Client(sock)
            with clients_lock:
                clients.append(client)
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    def watch_owner():
        # Dead-man's switch: the owner holds our stdin; EOF means it is gone.
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=accept_loop, daemon=True).start()
    threading.Thread(target=watch_owner, daemon=True).start()
    print("ready", flush=True)
    while True:
        libvirt.virEventRunDefaultImpl()


def fail(message):
    print("libvirt-qmp-bridge: %s" % message, file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except libvirt.libvirtError as error:
        fail(error.get_error_message())
