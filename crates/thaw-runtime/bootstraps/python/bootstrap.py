"""thaw's Python bootstrap: runs a Lambda-style Python handler against the AWS
Lambda Runtime API served by thaw's supervisor.

Standard library only. Reads AWS_LAMBDA_RUNTIME_API, _HANDLER, LAMBDA_TASK_ROOT
and the AWS_LAMBDA_* description of the function; loads `module.function`
(dots or slashes for packages), reports how long that took in the
X-Thaw-Function-Init-Ms header of the first /next, then serves invocations
forever. Init failures go to /runtime/init/error and end the process.

With AWS_LAMBDA_INITIALIZATION_TYPE=snap-start it speaks the SnapStart
handshake: after init (and, when THAW_SNAPSHOT_TEST_INVOKE=1, one test
invocation) it runs the before-snapshot hooks registered with
`snapshot_restore_py` (reverse order), then calls GET /runtime/restore/next,
which returns in each instance restored from the snapshot. It then applies
what the answer carries (per-instance and secret environment variables; a
reseed of `random`), runs the after-restore hooks (registration order) and
serves invocations. Hook failures go to /runtime/init/error
(Runtime.BeforeSnapshotError) or /runtime/restore/error
(Runtime.AfterRestoreError) and end the process.

With AWS_LAMBDA_LOG_FORMAT=JSON (the function's LoggingConfig), records of
the `logging` module are written to stdout as Lambda's JSON log lines
(timestamp, level, message, logger, requestId; errorType, errorMessage and
stackTrace for exceptions) at AWS_LAMBDA_LOG_LEVEL and above; print()
output stays plain text, as on Lambda.
"""

import decimal
import importlib
import json
import os
import socket
import sys
import time
import traceback

API_PREFIX = "/2018-06-01/runtime"
INIT_MS_HEADER = "X-Thaw-Function-Init-Ms"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
BOOTSTRAP_FILE = os.path.abspath(__file__)


def _line_buffered_output():
    """Print output as it happens, so it is logged with the invocation that printed it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass


def _flush_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


# The invocation in flight, for JSON log lines.
_request_id = None

# The `logging` module's level names that Lambda spells differently.
_LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def _json_logging():
    """Lambda's JSON log format for the `logging` module, when asked for
    (imported only then: a text-format start does not pay for it)."""
    if os.environ.get("AWS_LAMBDA_LOG_FORMAT") != "JSON":
        return
    import datetime
    import logging

    levels = {
        "TRACE": logging.DEBUG,
        "DEBUG": logging.DEBUG,
        "INFO": logging.INFO,
        "WARN": logging.WARNING,
        "ERROR": logging.ERROR,
        "FATAL": logging.CRITICAL,
    }

    class JsonFormatter(logging.Formatter):
        """A `logging` record as one of Lambda's JSON log lines."""

        def format(self, record):
            when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            doc = {
                "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
                "level": _LEVEL_NAMES.get(record.levelname, record.levelname),
                "message": record.getMessage(),
                "logger": record.name,
            }
            if _request_id:
                doc["requestId"] = _request_id
            if record.exc_info and record.exc_info[0] is not None:
                doc["errorType"] = record.exc_info[0].__name__
                doc["errorMessage"] = str(record.exc_info[1])
                doc["stackTrace"] = traceback.format_tb(record.exc_info[2])
            return json.dumps(doc, default=str)

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(levels.get(os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO").upper(), logging.INFO))


class _Headers(dict):
    """Response headers, stored lower-case; lookups are case-insensitive."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)


class ProtocolError(OSError):
    """The Runtime API answered something that is not HTTP/1.1 as we speak it."""


class RuntimeApiClient:
    """One keep-alive HTTP/1.1 connection to the Runtime API, on a plain socket.

    Not http.client: importing it pulls in the email and ssl packages, about
    35 ms of a Python cold start, for a protocol this small."""

    def __init__(self, address):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"AWS_LAMBDA_RUNTIME_API is not host:port: {address!r}")
        self._host = host
        self._port = int(port)
        self._sock = None
        self._buf = b""

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buf = b""

    def _recv(self):
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Runtime API closed the connection")
        self._buf += chunk

    def _read_until(self, sep, limit=1 << 16):
        while sep not in self._buf:
            if len(self._buf) > limit:
                raise ProtocolError("Runtime API response header too large")
            self._recv()
        head, _, self._buf = self._buf.partition(sep)
        return head

    def _read_exact(self, n):
        while len(self._buf) < n:
            self._recv()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _read_chunked(self):
        out = []
        while True:
            size = int(self._read_until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                while self._read_until(b"\r\n"):  # trailers, up to the empty line
                    pass
                return b"".join(out)
            out.append(self._read_exact(size))
            self._read_exact(2)

    def _exchange(self, method, path, body, headers):
        if isinstance(body, str):
            body = body.encode()
        body = body or b""
        lines = [
            f"{method} {API_PREFIX}{path} HTTP/1.1",
            f"Host: {self._host}:{self._port}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"Bad status line from the Runtime API: {head[0]!r}") from None
        hdrs = _Headers()
        for line in head[1:]:
            name, _, value = line.partition(":")
            hdrs[name.strip().lower()] = value.strip()
        if "chunked" in hdrs.get("Transfer-Encoding", "").lower():
            data = self._read_chunked()
        else:
            data = self._read_exact(int(hdrs.get("Content-Length", "0")))
        if hdrs.get("Connection", "").lower() == "close":
            self.close()
        return status, hdrs, data

    def request(self, method, path, body=None, headers=None):
        """Send one request; returns (status, headers, body). Reconnects once if the
        kept-alive connection turns out to be closed."""
        for attempt in range(2):
            if self._sock is None:
                self._sock = socket.create_connection((self._host, self._port))
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                return self._exchange(method, path, body, headers)
            except OSError:
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


class InitFault(Exception):
    """A failure to load the handler, with Lambda's error type."""

    def __init__(self, error_type, message, stack_trace=None):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.stack_trace = stack_trace or []


def _user_frames(tb):
    """The traceback without the bootstrap's own frames, formatted like Lambda's stackTrace."""
    frames = [f for f in traceback.extract_tb(tb) if os.path.abspath(f.filename) != BOOTSTRAP_FILE]
    return traceback.format_list(frames)


def _strip_importlib(frames):
    return [f for f in frames if "<frozen importlib" not in f]


def load_handler(handler_name):
    """Import the module and return the handler function, or raise InitFault /
    the exception the module raised while it was imported."""
    try:
        module_name, function_name = handler_name.rsplit(".", 1)
    except ValueError as e:
        raise InitFault("Runtime.MalformedHandlerName", f"Bad handler '{handler_name}': {e}") from None
    if not module_name or not function_name:
        raise InitFault("Runtime.MalformedHandlerName", f"Bad handler '{handler_name}'")
    import_name = module_name.replace("/", ".").strip(".")
    if import_name.split(".")[0] in sys.builtin_module_names:
        raise InitFault(
            "Runtime.BuiltInModuleConflict",
            f"Cannot use built-in module {module_name} as a handler module",
        )
    try:
        module = importlib.import_module(import_name)
    except ImportError as e:
        raise InitFault("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {e}") from None
    except SyntaxError as e:
        where = f'  File "{e.filename}" Line {e.lineno}\n    {(e.text or "").rstrip()}\n'
        raise InitFault(
            "Runtime.UserCodeSyntaxError",
            f"Syntax error in module '{module_name}': {e}",
            [where],
        ) from None
    try:
        handler = getattr(module, function_name)
    except AttributeError:
        raise InitFault(
            "Runtime.HandlerNotFound",
            f"Handler '{function_name}' missing on module '{module_name}'",
        ) from None
    if not callable(handler):
        raise InitFault(
            "Runtime.HandlerNotFound",
            f"Handler '{function_name}' on module '{module_name}' is not callable",
        )
    return handler


class CognitoIdentity:
    def __init__(self, doc):
        doc = doc or {}
        self.cognito_identity_id = doc.get("cognitoIdentityId")
        self.cognito_identity_pool_id = doc.get("cognitoIdentityPoolId")


class Client:
    def __init__(self, doc):
        doc = doc or {}
        self.installation_id = doc.get("installation_id")
        self.app_title = doc.get("app_title")
        self.app_version_name = doc.get("app_version_name")
        self.app_version_code = doc.get("app_version_code")
        self.app_package_name = doc.get("app_package_name")


class ClientContext:
    def __init__(self, doc):
        self.client = Client(doc.get("client")) if doc.get("client") else None
        self.custom = doc.get("custom")
        self.env = doc.get("env")


def _json_header(headers, name):
    raw = headers.get(name)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class LambdaContext:
    """The `context` argument of a handler."""

    def __init__(self, request_id, deadline_ms, invoked_function_arn, client_context, identity):
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        # A string, as in the AWS runtime interface client.
        self.memory_limit_in_mb = memory
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.client_context = ClientContext(client_context) if client_context is not None else None
        self.identity = CognitoIdentity(identity)
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, msg):
        sys.stdout.write(str(msg))
        sys.stdout.flush()

    def __repr__(self):
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},"
            f"function_name={self.function_name},function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn}])"
        )


def _json_default(value):
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _error_doc(error_type, message, request_id, stack_trace):
    return {
        "errorMessage": message,
        "errorType": error_type,
        "requestId": request_id,
        "stackTrace": stack_trace,
    }


def _log_error(error_type, message, stack_trace):
    lines = [f"[ERROR] {error_type}: {message}"]
    if stack_trace:
        lines.append("Traceback (most recent call last):")
        lines.extend(s.rstrip("\n") for s in stack_trace)
    print("\n".join(lines), file=sys.stderr)


def _post_error(client, path, doc):
    _flush_output()
    body = json.dumps(doc).encode()
    headers = {ERROR_TYPE_HEADER: doc["errorType"], "Content-Type": "application/json"}
    status, _, data = client.request("POST", path, body=body, headers=headers)
    if status != 202:
        print(f"thaw bootstrap: {path} returned {status}: {data[:200]!r}", file=sys.stderr)


def _report_init_error(client, error_type, message, stack_trace):
    _log_error(error_type, message, stack_trace)
    try:
        _post_error(client, "/init/error", _error_doc(error_type, message, "", stack_trace))
    except OSError as e:
        print(f"thaw bootstrap: cannot report the init error: {e}", file=sys.stderr)
    _flush_output()
    sys.exit(1)


def _invoke(client, handler, headers, payload):
    global _request_id
    request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
    _request_id = request_id
    trace_id = headers.get("Lambda-Runtime-Trace-Id")
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)
    try:
        deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms", "0"))
    except ValueError:
        deadline_ms = 0
    context = LambdaContext(
        request_id,
        deadline_ms,
        headers.get("Lambda-Runtime-Invoked-Function-Arn"),
        _json_header(headers, "Lambda-Runtime-Client-Context"),
        _json_header(headers, "Lambda-Runtime-Cognito-Identity"),
    )
    error = None
    try:
        event = json.loads(payload) if payload else None
    except ValueError as e:
        error = _error_doc("Runtime.UnmarshalError", f"Unable to unmarshal input: {e}", request_id, [])
    if error is None:
        try:
            result = handler(event, context)
        except Exception as e:  # noqa: BLE001 - every handler failure is reported
            stack = _user_frames(e.__traceback__)
            error = _error_doc(type(e).__name__, str(e), request_id, stack)
        else:
            try:
                body = json.dumps(result, default=_json_default).encode()
            except (TypeError, ValueError) as e:
                error = _error_doc("Runtime.MarshalError", f"Unable to marshal response: {e}", request_id, [])
    path = f"/invocation/{request_id}"
    if error is not None:
        _log_error(error["errorType"], error["errorMessage"], error["stackTrace"])
        _post_error(client, path + "/error", error)
        return
    _flush_output()
    status, _, data = client.request(
        "POST", path + "/response", body=body, headers={"Content-Type": "application/json"}
    )
    if status != 202:
        print(f"thaw bootstrap: the response was refused ({status}): {data[:300]!r}", file=sys.stderr)


HOOK_TIMEOUT_S = 10


class HookTimeout(Exception):
    """A runtime hook ran longer than HOOK_TIMEOUT_S."""


def _run_hook(func, args, kwargs, what):
    """Calls one hook with a time limit (SIGALRM; never left armed, so no
    timer is pending when the instance is snapshotted)."""
    import signal

    def on_alarm(signum, frame):
        raise HookTimeout(f"{what} hook {getattr(func, '__qualname__', func)!s} ran longer than {HOOK_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HOOK_TIMEOUT_S)
    try:
        func(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _apply_restore(body):
    """Applies the restore/next answer: environment first (hooks may read it),
    then a reseed of the `random` module's generator, whose state every
    instance restored from one snapshot would otherwise share."""
    doc = json.loads(body) if body else {}
    for name, value in doc.get("environment") or []:
        os.environ[name] = value
    if doc.get("reseed", True) and "random" in sys.modules:
        sys.modules["random"].seed()


def _hook_error_doc(error_type, e):
    return _error_doc(error_type, f"{type(e).__name__}: {e}", "", _user_frames(e.__traceback__))


def _snapshot_handshake(client, next_headers):
    """Before-snapshot hooks, GET /restore/next (returns after a restore),
    the restore's environment and reseed, after-restore hooks."""
    try:
        import snapshot_restore_py

        hooks = snapshot_restore_py.get_before_snapshot()
        # Reverse order of registration, as in AWS's runtime client.
        while hooks:
            func, args, kwargs = hooks.pop()
            _run_hook(func, args, kwargs, "before-snapshot")
    except Exception as e:  # noqa: BLE001 - every hook failure fails the snapshot
        doc = _hook_error_doc("Runtime.BeforeSnapshotError", e)
        _report_init_error(client, doc["errorType"], doc["errorMessage"], doc["stackTrace"])
    _flush_output()
    try:
        status, _, body = client.request("GET", "/restore/next", headers=next_headers)
    except OSError as e:
        print(f"thaw bootstrap: the Runtime API is gone: {e}", file=sys.stderr)
        sys.exit(1)
    if status != 200:
        print(f"thaw bootstrap: /restore/next returned {status}: {body[:200]!r}", file=sys.stderr)
        sys.exit(1)
    try:
        _apply_restore(body)
        import snapshot_restore_py

        for func, args, kwargs in list(snapshot_restore_py.get_after_restore()):
            _run_hook(func, args, kwargs, "after-restore")
    except Exception as e:  # noqa: BLE001 - every hook failure fails the restore
        doc = _hook_error_doc("Runtime.AfterRestoreError", e)
        _log_error(doc["errorType"], doc["errorMessage"], doc["stackTrace"])
        try:
            _post_error(client, "/restore/error", doc)
        except OSError as pe:
            print(f"thaw bootstrap: cannot report the restore error: {pe}", file=sys.stderr)
        _flush_output()
        sys.exit(65)


def _next(client, headers):
    try:
        status, hdrs, payload = client.request("GET", "/invocation/next", headers=headers)
    except OSError as e:
        print(f"thaw bootstrap: the Runtime API is gone: {e}", file=sys.stderr)
        sys.exit(1)
    if status != 200:
        print(f"thaw bootstrap: /invocation/next returned {status}: {payload[:200]!r}", file=sys.stderr)
        sys.exit(1)
    return hdrs, payload


def _serve_one(client, handler, headers, payload):
    try:
        _invoke(client, handler, headers, payload)
    except OSError as e:
        print(f"thaw bootstrap: cannot report the result: {e}", file=sys.stderr)
        sys.exit(1)


def main():
    _line_buffered_output()
    _json_logging()
    address = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not address:
        print("thaw bootstrap: AWS_LAMBDA_RUNTIME_API is not set", file=sys.stderr)
        sys.exit(1)
    client = RuntimeApiClient(address)
    task_root = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
    sys.path[:] = [task_root] + [p for p in sys.path if p != task_root]

    started = time.perf_counter()
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""))
    except InitFault as e:
        _report_init_error(client, e.error_type, e.message, e.stack_trace)
    except Exception as e:  # noqa: BLE001 - an exception raised by the module at import
        _report_init_error(client, type(e).__name__, str(e), _strip_importlib(_user_frames(e.__traceback__)))
    init_ms = (time.perf_counter() - started) * 1000.0

    next_headers = {INIT_MS_HEADER: f"{init_ms:.3f}"}
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        if os.environ.get("THAW_SNAPSHOT_TEST_INVOKE") == "1":
            # Warm up what the first invocation loads or compiles, so the
            # snapshot holds it too.
            headers, payload = _next(client, next_headers)
            next_headers = {}
            _serve_one(client, handler, headers, payload)
        _snapshot_handshake(client, next_headers)
        next_headers = {}
    while True:
        headers, payload = _next(client, next_headers)
        next_headers = {}
        _serve_one(client, handler, headers, payload)


if __name__ == "__main__":
    main()
