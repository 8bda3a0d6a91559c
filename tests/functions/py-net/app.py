"""A function with a backend connection, the pattern of docs/architecture.md
("Connections and snapshots"): opened at init, closed before a snapshot,
opened again after a restore. Each request goes over it; the backend (a
test's own host) answers with the address it sees. KEEP_OPEN=1 leaves the
connection open at the snapshot point (the snapshot must then fail);
CONNECT_AT_INIT=0 opens none (for functions whose egress denies the backend).
The `connect` action tries a connection of its own and names the error;
`flood` opens `count` connections as fast as it can."""
import errno
import os
import select
import socket
import time

from snapshot_restore_py import register_after_restore, register_before_snapshot

BACKEND = (os.environ["BACKEND_HOST"], int(os.environ["BACKEND_PORT"]))
CONN = None
SEEN_AT_INIT = None


def connect():
    global CONN
    CONN = socket.create_connection(BACKEND, timeout=3)
    CONN.settimeout(3)
    return CONN.makefile("rb").readline().decode().strip()


def close():
    global CONN
    if CONN is not None:
        CONN.close()
        CONN = None


if os.environ.get("CONNECT_AT_INIT", "1") == "1":
    SEEN_AT_INIT = connect()
    if os.environ.get("KEEP_OPEN") != "1":
        register_before_snapshot(close)
        register_after_restore(connect)


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("action") == "connect":
        # A connection of the request's own: to anywhere the event says.
        t0 = time.monotonic()
        try:
            s = socket.create_connection((event["host"], event["port"]), timeout=5)
            s.close()
            return {"ok": True}
        except socket.timeout:
            return {"ok": False, "error": "timeout", "s": time.monotonic() - t0}
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            return {"ok": False, "error": name, "s": time.monotonic() - t0}
    if event.get("action") == "flood":
        # `count` new connections as fast as it can (non-blocking, 100 at
        # a time): how many got through, and the errors of the others.
        ok, errors = 0, {}
        left = event["count"]
        while left > 0:
            batch = []
            for _ in range(min(100, left)):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((event["host"], event["port"]))
                batch.append(s)
            left -= len(batch)
            pending = set(batch)
            deadline = time.monotonic() + 3
            while pending and time.monotonic() < deadline:
                _, ready, _ = select.select([], list(pending), [], 0.5)
                for s in ready:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err == 0:
                        ok += 1
                    else:
                        name = errno.errorcode.get(err, str(err))
                        errors[name] = errors.get(name, 0) + 1
                    pending.discard(s)
            if pending:
                errors["timeout"] = errors.get("timeout", 0) + len(pending)
            for s in batch:
                s.close()
        return {"ok": ok, "errors": errors}
    if event.get("action") == "resolve":
        return {"resolv": open("/etc/resolv.conf").read(), "hosts": open("/etc/hosts").read()}
    CONN.sendall(b"ping\n")
    reply = CONN.makefile("rb").readline().decode().strip()
    return {"seen_as": reply.split(" ")[0], "seen_at_init": SEEN_AT_INIT}
