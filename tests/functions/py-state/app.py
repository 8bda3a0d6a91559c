"""Test function: keeps state across warm invocations and performs the actions
the isolation and lifecycle tests ask for."""
import json
import os
import socket
import time

COUNT = 0
BIG = {i: str(i) for i in range(100_000)}
print("py-state init done")


def _try(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as e:  # noqa: BLE001 - report any failure to the test
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _fill_tmp():
    written = 0
    chunk = b"x" * (1 << 20)
    with open("/tmp/fill", "wb", buffering=0) as f:
        try:
            while written < (4 << 30):
                f.write(chunk)
                written += len(chunk)
        except OSError as e:
            os.remove("/tmp/fill")
            return {"written_mb": written >> 20, "error": str(e)}
    return {"written_mb": written >> 20, "error": None}


def _fork_bomb():
    pids, error = [], None
    for _ in range(10_000):
        try:
            pid = os.fork()
        except OSError as e:
            error = str(e)
            break
        if pid == 0:
            time.sleep(2)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return {"forked": len(pids), "error": error}


def handler(event, context):
    global COUNT
    COUNT += 1
    action = (event or {}).get("action", "echo")
    print(f"invocation {COUNT} action={action}")
    if action == "echo":
        return {
            "count": COUNT,
            "event": event,
            "big": len(BIG),
            "request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "function_name": context.function_name,
            "function_arn": context.invoked_function_arn,
            "env_function_name": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "uid": os.getuid(),
        }
    if action == "sleep":
        time.sleep(event["seconds"])
        return "slept"
    if action == "raise":
        raise ValueError("boom")
    if action == "exit":
        os._exit(3)
    if action == "alloc":
        data = bytearray(event["mb"] << 20)
        for i in range(0, len(data), 4096):
            data[i] = 1
        return len(data)
    if action == "read":
        return _try(lambda: open(event["path"], "rb").read(64).decode("latin-1"))
    if action == "listdir":
        return _try(lambda: sorted(os.listdir(event["path"])))
    if action == "write":
        return _try(lambda: open(event["path"], "w").write("x"))
    if action == "fill_tmp":
        return _fill_tmp()
    if action == "forkbomb":
        return _fork_bomb()
    if action == "env":
        return dict(os.environ)
    if action == "status":
        return open("/proc/self/status").read()
    if action == "fds":
        out = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                out[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except FileNotFoundError:
                continue  # the descriptor listdir itself used, closed by now
            except OSError as e:
                out[fd] = f"error: {e}"
        return out
    if action == "interfaces":
        return [name for _, name in socket.if_nameindex()]
    if action == "big_response":
        return "x" * (event["mb"] << 20)
    if action == "log_lines":
        for i in range(event["n"]):
            print(f"line {i}")
        return event["n"]
    return {"unknown": action}
