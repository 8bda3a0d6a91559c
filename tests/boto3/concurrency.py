"""Drive thaw's concurrency controls with the real AWS SDK for Python.

Usage: python3 concurrency.py ENDPOINT FUNCTIONS_DIR PHASE
PHASE "main" runs every check; PHASE "after-restart" checks that the
reservation made in "main" survived a daemon restart. Talks to loopback
only; every wait is bounded. Exits non-zero on the first failed check.
"""
import json
import sys
import threading
import time

from botocore.exceptions import ClientError

from common import Checks, make_client, zip_dir as zip_function

ENDPOINT, FUNCTIONS, PHASE = sys.argv[1], sys.argv[2], sys.argv[3]
client = make_client(ENDPOINT)
check = Checks()


def zip_dir(name):
    return zip_function(FUNCTIONS, name)


def error_of(fn, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        return e.response
    return None


def invoke(name, payload):
    return client.invoke(FunctionName=name, Payload=json.dumps(payload).encode())


if PHASE == "after-restart":
    c = client.get_function_concurrency(FunctionName="conc")
    check(c.get("ReservedConcurrentExecutions") == 1, f"reservation survives a restart: {c}")
    g = client.get_function(FunctionName="conc")
    check(g.get("Concurrency") == {"ReservedConcurrentExecutions": 1}, "GetFunction after restart")
    print(f"{check.passed} checks passed")
    sys.exit(0)

for name in ("conc", "prov"):
    client.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="arn:aws:iam::000000000000:role/thaw",
        Handler="app.handler",
        Code={"ZipFile": zip_dir("py-state")},
        MemorySize=128,
        Timeout=10,
    )

# --- GetAccountSettings ----------------------------------------------------
s = client.get_account_settings()
lim, use = s["AccountLimit"], s["AccountUsage"]
check(lim["ConcurrentExecutions"] == 1000, f"account limit: {lim}")
check(lim["UnreservedConcurrentExecutions"] == 1000, "nothing reserved yet")
check(lim["CodeSizeZipped"] == 52428800 and lim["CodeSizeUnzipped"] == 262144000, "code size limits")
check(lim["TotalCodeSize"] == 80530636800, "total code size limit")
check(use["FunctionCount"] == 2 and use["TotalCodeSize"] > 0, f"usage: {use}")

# --- Reserved concurrency: put / get / delete ------------------------------
check(client.get_function_concurrency(FunctionName="conc").get("ReservedConcurrentExecutions") is None,
      "no reservation: {}")
r = client.put_function_concurrency(FunctionName="conc", ReservedConcurrentExecutions=5)
check(r["ReservedConcurrentExecutions"] == 5, "put reserved concurrency")
check(client.get_function_concurrency(FunctionName="conc")["ReservedConcurrentExecutions"] == 5, "get it")
check(client.get_function(FunctionName="conc")["Concurrency"] == {"ReservedConcurrentExecutions": 5},
      "GetFunction shows it")
check(client.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 995,
      "unreserved shrinks")
client.delete_function_concurrency(FunctionName="conc")
check("Concurrency" not in client.get_function(FunctionName="conc"), "delete reserved concurrency")

# --- Out of range ----------------------------------------------------------
e = error_of(client.put_function_concurrency, FunctionName="conc", ReservedConcurrentExecutions=901)
check(e and e["Error"]["Code"] == "InvalidParameterValueException"
      and e["ResponseMetadata"]["HTTPStatusCode"] == 400
      and "below its minimum value of [100]" in e["Error"]["Message"], f"too much reserved: {e and e['Error']}")
raw = make_client(ENDPOINT, validate=False)
e = error_of(raw.put_function_concurrency, FunctionName="conc", ReservedConcurrentExecutions=-1)
check(e and e["ResponseMetadata"]["HTTPStatusCode"] == 400
      and e["Error"]["Code"] in ("ValidationException", "InvalidParameterValueException"),
      f"negative reserved: {e and e['Error']}")
e = error_of(client.put_function_concurrency, FunctionName="nope", ReservedConcurrentExecutions=1)
check(e and e["Error"]["Code"] == "ResourceNotFoundException", "unknown function")

# --- Reserved 0: the function is off ----------------------------------------
client.put_function_concurrency(FunctionName="conc", ReservedConcurrentExecutions=0)
e = error_of(client.invoke, FunctionName="conc", Payload=b"{}")
check(e and e["Error"]["Code"] == "TooManyRequestsException"
      and e["ResponseMetadata"]["HTTPStatusCode"] == 429
      and (e.get("Reason") or e["Error"].get("Reason")) == "ReservedFunctionConcurrentInvocationLimitExceeded",
      f"reserved 0 throttles: {e}")

# --- Reserved 1, two concurrent slow invocations ----------------------------
client.put_function_concurrency(FunctionName="conc", ReservedConcurrentExecutions=1)
invoke("conc", {"action": "echo"})  # start the instance first: both calls then are about the limit
results = []


def slow():
    try:
        r = invoke("conc", {"action": "sleep", "seconds": 1.5})
        results.append(("ok", r["StatusCode"]))
    except ClientError as e:
        results.append((e.response["Error"]["Code"], e.response.get("Reason") or e.response["Error"].get("Reason")))


threads = [threading.Thread(target=slow) for _ in range(2)]
for t in threads:
    t.start()
    time.sleep(0.2)
for t in threads:
    t.join(timeout=30)
check(sorted(results) == sorted([("ok", 200),
                                 ("TooManyRequestsException", "ReservedFunctionConcurrentInvocationLimitExceeded")]),
      f"one of two concurrent calls throttled: {results}")
# thaw's own endpoints are signed like the Lambda API (botocore's signer).
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
import urllib.request

_req = AWSRequest(method="GET", url=ENDPOINT + "/metrics")
from botocore.credentials import Credentials

SigV4Auth(
    Credentials("AKIDTHAWTEST00000001", "not-a-real-secret-for-thaw-tests-0000000"),
    "lambda",
    "us-east-1",
).add_auth(_req)
metrics = urllib.request.urlopen(
    urllib.request.Request(ENDPOINT + "/metrics", headers=dict(_req.headers.items())), timeout=10
).read().decode()
check('thaw_throttles_total{function="conc",reason="ReservedFunctionConcurrentInvocationLimitExceeded"} 2' in metrics,
      "throttles are counted by reason")

# --- Provisioned concurrency -------------------------------------------------
e = error_of(client.get_provisioned_concurrency_config, FunctionName="prov", Qualifier="$LATEST")
check(e and e["Error"]["Code"] == "ProvisionedConcurrencyConfigNotFoundException", "no config yet")
r = client.put_provisioned_concurrency_config(FunctionName="prov", Qualifier="$LATEST",
                                              ProvisionedConcurrentExecutions=2)
check(r["ResponseMetadata"]["HTTPStatusCode"] == 202 and r["RequestedProvisionedConcurrentExecutions"] == 2,
      f"put provisioned: {r['Status']}")
deadline = time.time() + 60
while True:
    g = client.get_provisioned_concurrency_config(FunctionName="prov", Qualifier="$LATEST")
    if g["Status"] != "IN_PROGRESS" or time.time() > deadline:
        break
    time.sleep(0.5)
check(g["Status"] == "READY" and g["AvailableProvisionedConcurrentExecutions"] == 2
      and g["AllocatedProvisionedConcurrentExecutions"] == 2, f"provisioned READY: {g}")
lst = client.list_provisioned_concurrency_configs(FunctionName="prov")["ProvisionedConcurrencyConfigs"]
check(len(lst) == 1 and lst[0]["FunctionArn"].endswith(":function:prov:$LATEST") and lst[0]["Status"] == "READY",
      "list provisioned configs")
r = invoke("prov", {"action": "echo"})
start = r["ResponseMetadata"]["HTTPHeaders"].get("x-thaw-start")
check(start == "warm", f"first invoke after READY is warm: {start}")
check(json.loads(r["Payload"].read())["count"] == 1, "on a provisioned instance that never ran before")
e = error_of(client.put_provisioned_concurrency_config, FunctionName="conc", Qualifier="$LATEST",
             ProvisionedConcurrentExecutions=2)
check(e and e["Error"]["Code"] == "InvalidParameterValueException", "provisioned above reserved")
client.delete_provisioned_concurrency_config(FunctionName="prov", Qualifier="$LATEST")
e = error_of(client.get_provisioned_concurrency_config, FunctionName="prov", Qualifier="$LATEST")
check(e and e["Error"]["Code"] == "ProvisionedConcurrencyConfigNotFoundException", "delete provisioned")

print(f"{check.passed} checks passed")
