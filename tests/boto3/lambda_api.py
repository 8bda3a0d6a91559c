"""Drive thaw's Lambda-compatible API with the real AWS SDK for Python.

Usage: python3 lambda_api.py ENDPOINT FUNCTIONS_DIR
Exits non-zero on the first failed check; prints one line per check.
"""
import base64
import io
import json
import os
import sys
import time
import zipfile

import boto3
import botocore.config
from botocore.exceptions import ClientError

ENDPOINT, FUNCTIONS = sys.argv[1], sys.argv[2]

client = boto3.client(
    "lambda",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id="AKIDTHAWTEST00000001",
    aws_secret_access_key="not-a-real-secret-for-thaw-tests-0000000",
    config=botocore.config.Config(retries={"max_attempts": 0}, read_timeout=120),
)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


def zip_dir(name, extra=None):
    buf = io.BytesIO()
    root = os.path.join(FUNCTIONS, name)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for dirpath, _, files in os.walk(root):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, root))
        for arcname, text in (extra or {}).items():
            z.writestr(arcname, text)
    return buf.getvalue()


def error_code(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None, None


def invoke(name, payload, **kw):
    r = client.invoke(FunctionName=name, Payload=json.dumps(payload).encode(), **kw)
    body = r["Payload"].read()
    return r, (json.loads(body) if body else None)


# --- CreateFunction / GetFunction / ListFunctions -------------------------
py = client.create_function(
    FunctionName="boto-py",
    Runtime="python3.11",
    Role="arn:aws:iam::000000000000:role/thaw",
    Handler="app.handler",
    Code={"ZipFile": zip_dir("py-state")},
    MemorySize=256,
    Timeout=5,
    Environment={"Variables": {"GREETING": "hi"}},
)
check(py["FunctionName"] == "boto-py" and py["Runtime"] == "python3.11", "create python function")
check(py["MemorySize"] == 256 and py["Timeout"] == 5 and py["State"] == "Active", "create returns configuration")
node = client.create_function(
    FunctionName="boto-node",
    Runtime="nodejs20.x",
    Role="arn:aws:iam::000000000000:role/thaw",
    Handler="index.handler",
    Code={"ZipFile": zip_dir("node-state")},
    Tags={"created": "with-tags"},
)
check(node["MemorySize"] == 128 and node["Timeout"] == 3, "create node function with Lambda defaults")
check(client.get_function(FunctionName="boto-node")["Tags"] == {"created": "with-tags"},
      "tags given to create_function are kept")
cfg = client.get_function_configuration(FunctionName="boto-node")
check(cfg["TracingConfig"] == {"Mode": "PassThrough"}, "TracingConfig defaults to PassThrough")
check(cfg["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}, "SnapStart default")
check(cfg["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/aws/lambda/boto-node"},
      "LoggingConfig default")
cfg = client.update_function_configuration(
    FunctionName="boto-node",
    TracingConfig={"Mode": "Active"},
    KMSKeyArn="arn:aws:kms:us-east-1:000000000000:key/thaw",
    VpcConfig={"SubnetIds": ["subnet-1"], "SecurityGroupIds": ["sg-1"]},
    SnapStart={"ApplyOn": "PublishedVersions"},
    LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "DEBUG"},
    DeadLetterConfig={"TargetArn": "arn:aws:sqs:us-east-1:000000000000:dlq"},
)
got = client.get_function_configuration(FunctionName="boto-node")
check(got["TracingConfig"] == {"Mode": "Active"}, "TracingConfig kept")
check(got["KMSKeyArn"] == "arn:aws:kms:us-east-1:000000000000:key/thaw", "KMSKeyArn kept")
check(got["VpcConfig"]["SubnetIds"] == ["subnet-1"] and got["VpcConfig"]["SecurityGroupIds"] == ["sg-1"],
      "VpcConfig kept")
check(got["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"},
      "SnapStart kept ($LATEST is never optimized)")
check(got["LoggingConfig"]["LogFormat"] == "JSON" and got["LoggingConfig"]["ApplicationLogLevel"] == "DEBUG",
      "LoggingConfig kept")
check(got["DeadLetterConfig"] == {"TargetArn": "arn:aws:sqs:us-east-1:000000000000:dlq"}, "DeadLetterConfig kept")
code, status = error_code(client.update_function_configuration, FunctionName="boto-node",
                          TracingConfig={"Mode": "Loud"})
check(code == "ValidationException", "an unknown TracingConfig mode is refused")
code, status = error_code(client.update_function_configuration, FunctionName="boto-node",
                          LoggingConfig={"LogFormat": "Text", "ApplicationLogLevel": "INFO"})
check(code == "InvalidParameterValueException", "log levels need LogFormat JSON")
check(client.get_function_configuration(FunctionName="boto-node")["TracingConfig"] == {"Mode": "Active"},
      "a refused update changes nothing")

got = client.get_function(FunctionName="boto-py")
check(got["Configuration"]["CodeSha256"] == py["CodeSha256"], "get function")
check(got["Configuration"]["Environment"]["Variables"]["GREETING"] == "hi", "get returns environment")
names = sorted(f["FunctionName"] for f in client.list_functions()["Functions"])
check({"boto-py", "boto-node"} <= set(names), f"list functions: {names}")
arn_get = client.get_function(FunctionName=py["FunctionArn"])
check(arn_get["Configuration"]["FunctionName"] == "boto-py", "get by ARN")

# --- Invoke ----------------------------------------------------------------
r, out = invoke("boto-py", {"action": "echo", "n": 1})
check(r["StatusCode"] == 200 and out["count"] == 1 and out["event"]["n"] == 1, "python invoke (cold)")
check(out["function_name"] == "boto-py" and out["memory_limit_in_mb"] == "256", "python context fields")
check(0 < out["remaining_ms"] <= 5000, "python remaining time")
r, out = invoke("boto-py", {"action": "echo"}, LogType="Tail")
check(out["count"] == 2, "python invoke reuses the warm instance")
log = base64.b64decode(r["LogResult"]).decode()
check("invocation 2 action=echo" in log and "REPORT RequestId" in log, "LogType Tail returns the log")
r, out = invoke("boto-node", {"x": 1})
check(out["count"] == 1 and out["event"] == {"x": 1} and out["last"] == 199998, "node invoke")
check(out["functionName"] == "boto-node" and out["remainingMs"] > 0, "node context fields")

r, out = invoke("boto-py", {"action": "raise"})
check(r.get("FunctionError") == "Unhandled" and out["errorType"] == "ValueError", "python function error")
check(out["errorMessage"] == "boom", "python error message")
r, out = invoke("boto-node", {"action": "raise"})
check(r.get("FunctionError") == "Unhandled" and out["errorType"] == "TypeError", "node function error")

r = client.invoke(FunctionName="boto-py", InvocationType="Event", Payload=b'{"action":"echo"}')
check(r["StatusCode"] == 202, "Event invocation is accepted with 202")
r = client.invoke(FunctionName="boto-py", InvocationType="DryRun")
check(r["StatusCode"] == 204, "DryRun returns 204")

# --- Errors ----------------------------------------------------------------
code, status = error_code(client.invoke, FunctionName="nope", Payload=b"{}")
check((code, status) == ("ResourceNotFoundException", 404), "unknown function is 404 ResourceNotFoundException")
code, status = error_code(client.get_function, FunctionName="nope")
check((code, status) == ("ResourceNotFoundException", 404), "get unknown function")
code, status = error_code(client.invoke, FunctionName="boto-py", Payload=b"x" * (6 * 1024 * 1024 + 10))
check(status == 413, f"payload over 6 MB is 413 ({code})")
code, status = error_code(client.invoke, FunctionName="boto-py", Payload=b"{not json")
check(code == "InvalidRequestContentException" and status == 400, "non-JSON payload")
code, status = error_code(
    client.create_function, FunctionName="boto-py", Runtime="python3.11", Role="r",
    Handler="app.handler", Code={"ZipFile": zip_dir("py-state")})
check(code == "ResourceConflictException" and status == 409, "duplicate create is 409")
code, status = error_code(
    client.create_function, FunctionName="bad-rt", Runtime="cobol85", Role="r",
    Handler="app.handler", Code={"ZipFile": zip_dir("py-state")})
check(code == "InvalidParameterValueException" and status == 400, "unknown runtime")
code, status = error_code(
    client.create_function, FunctionName="bad-zip", Runtime="python3.11", Role="r",
    Handler="app.handler", Code={"ZipFile": b"this is not a zip"})
check(code == "InvalidParameterValueException", "invalid zip")
code, status = error_code(
    client.create_function, FunctionName="bad name!", Runtime="python3.11", Role="r",
    Handler="app.handler", Code={"ZipFile": zip_dir("py-state")})
check(status == 400, f"invalid function name ({code})")

# --- Update ----------------------------------------------------------------
upd = client.update_function_code(
    FunctionName="boto-py",
    ZipFile=zip_dir("py-state", {"app.py": "def handler(event, context):\n    return {'version': 2}\n"}),
)
check(upd["CodeSha256"] != py["CodeSha256"], "update function code")
r, out = invoke("boto-py", {})
check(out == {"version": 2}, "invoke after code update runs the new code")
cfg = client.update_function_configuration(
    FunctionName="boto-py", MemorySize=512, Timeout=7, Environment={"Variables": {"A": "1"}})
check(cfg["MemorySize"] == 512 and cfg["Timeout"] == 7, "update function configuration")
check(client.get_function_configuration(FunctionName="boto-py")["Environment"]["Variables"] == {"A": "1"},
      "configuration persisted")

# --- Tags ------------------------------------------------------------------
arn = client.get_function(FunctionName="boto-py")["Configuration"]["FunctionArn"]
client.tag_resource(Resource=arn, Tags={"team": "a", "env": "test"})
check(client.list_tags(Resource=arn)["Tags"] == {"team": "a", "env": "test"}, "tag_resource, list_tags")
client.untag_resource(Resource=arn, TagKeys=["env"])
check(client.list_tags(Resource=arn)["Tags"] == {"team": "a"}, "untag_resource")
check(client.get_function(FunctionName="boto-py").get("Tags") == {"team": "a"}, "get_function returns Tags")
code, status = error_code(client.tag_resource, Resource=arn, Tags={"aws:x": "1"})
check(code == "InvalidParameterValueException", "a tag key with the reserved aws: prefix is refused")
code, status = error_code(client.tag_resource, Resource=arn, Tags={f"k{i}": "v" for i in range(50)})
check(code == "InvalidParameterValueException", "more than 50 tags are refused")
check(client.list_tags(Resource=arn)["Tags"] == {"team": "a"}, "a refused tagging changes nothing")

# --- Delete ----------------------------------------------------------------
client.delete_function(FunctionName="boto-py")
client.delete_function(FunctionName="boto-node")
code, status = error_code(client.get_function, FunctionName="boto-py")
check(code == "ResourceNotFoundException", "deleted function is gone")
code, status = error_code(client.delete_function, FunctionName="boto-py")
check(code == "ResourceNotFoundException", "delete unknown function is 404")

print(f"boto3: {checks} checks passed", flush=True)
