"""Snapshot test function: builds state during init, then proves after a
restore that it survived, that instances are independent, and that a
restored instance times out and serves like any other."""
import decimal
import hashlib
import json
import os
import socket
import time
import uuid

INIT_ID = uuid.uuid4().hex  # made once, during init
BIG = {f"k{i}": i * i for i in range(300_000)}
DIGEST = hashlib.sha256(json.dumps(sorted(BIG.items())[:1000]).encode()).hexdigest()
STORE = {}
COUNT = 0


def handler(event, context):
    global COUNT
    action = event.get("action")
    if action == "write":
        STORE[event["key"]] = event["value"]
        return {"ok": True}
    if action == "read":
        return {"value": STORE.get(event["key"])}
    if action == "state":
        return {
            "init_id": INIT_ID,
            "big": len(BIG),
            "k777": BIG["k777"],
            "digest": DIGEST,
            "decimal": str(decimal.Decimal(1) / decimal.Decimal(7)),
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "time": time.time(),
            "request_id": context.aws_request_id,
            "snap": STORE.get("snap"),
        }
    if action == "count":
        COUNT += 1
        return {"count": COUNT}
    if action == "peek":
        # A function must not read its own snapshot.
        try:
            with open(event["path"], "rb") as f:
                return {"read": len(f.read(16))}
        except OSError as e:
            return {"error": type(e).__name__}
    if action == "sleep":
        time.sleep(event["seconds"])
        return {"slept": True}
    if action == "isolate":
        STORE["mine"] = event["value"]
        time.sleep(event.get("hold_ms", 0) / 1000)
        return {"read": STORE.get("mine"), "hostname": socket.gethostname()}
    return {"echo": event}
