"""Runtime hooks and per-instance identity, seen from inside a function.

Registers two before-snapshot and two after-restore hooks (decorator and
call forms) that record the order they ran in; FAIL_BEFORE / FAIL_AFTER make
one of them raise. Each invocation reports the hooks' record and what should
differ between instances restored from one snapshot."""
import os
import random
import socket
import time
import uuid

from snapshot_restore_py import register_after_restore, register_before_snapshot

RAN = []
INIT_MONOTONIC = time.monotonic()
INIT_BOOTTIME = time.clock_gettime(time.CLOCK_BOOTTIME)
# What init saw of the secrets (a snapshot run must see none).
SECRETS_AT_INIT = [os.environ.get("CANARY_TOKEN"), os.environ.get("OTHER_CANARY")]


@register_before_snapshot
def before_one():
    RAN.append("before-1")


def before_two(tag):
    RAN.append(f"before-2:{tag}")
    if os.environ.get("FAIL_BEFORE") == "1":
        raise RuntimeError("before-snapshot hook refused")


register_before_snapshot(before_two, "x")


@register_after_restore
def after_one():
    # Runs after the restore's environment is in place.
    RAN.append(f"after-1:{os.environ.get('THAW_INSTANCE_ID', '')[:8]}")


def after_two(tag):
    RAN.append(f"after-2:{tag}")
    if os.environ.get("FAIL_AFTER") == "1":
        raise ValueError("after-restore hook refused")
    if os.environ.get("SLOW_AFTER") == "1":
        time.sleep(30)


register_after_restore(after_two, tag="y")


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"error: {e}"


def handler(event, context):
    return {
        "ran": RAN,
        "random": random.random(),
        "uuid": str(uuid.uuid4()),
        "hostname": socket.gethostname(),
        "instance_id": os.environ.get("THAW_INSTANCE_ID"),
        "boot_id": _read("/proc/sys/kernel/random/boot_id"),
        "machine_id": _read("/etc/machine-id"),
        "init_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "log_stream": context.log_stream_name,
        "init_monotonic": INIT_MONOTONIC,
        "monotonic": time.monotonic(),
        "init_boottime": INIT_BOOTTIME,
        "boottime": time.clock_gettime(time.CLOCK_BOOTTIME),
        "secret": os.environ.get("CANARY_TOKEN"),
        "other_secret": os.environ.get("OTHER_CANARY"),
        "secrets_at_init": SECRETS_AT_INIT,
        "thaw_secrets": os.environ.get("THAW_SECRETS"),
        "version": os.environ.get("VERSION"),
        "event": event,
    }
