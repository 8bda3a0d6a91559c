"""One account never reaches another's functions through boto3: with
account A's key, A's own function answers; the other account's function,
named by its ARN, is refused with AccessDeniedException (403) for reads,
changes, invocations and deletion; a plain name is A's own namespace.
Usage: python3 accounts.py ENDPOINT KEY SECRET ACCOUNT_ID OTHER_FUNCTION_ARN
"""
import json
import sys

import boto3
import botocore.config
from botocore.exceptions import ClientError

ENDPOINT, KEY, SECRET, ACCOUNT, OTHER = sys.argv[1:6]

lam = boto3.client(
    "lambda",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id=KEY,
    aws_secret_access_key=SECRET,
    config=botocore.config.Config(retries={"max_attempts": 0}),
)

checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


def refused(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None


own_arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:f"
fns = lam.list_functions()["Functions"]
check([f["FunctionArn"] for f in fns] == [own_arn], f"A lists only its own function: {fns}")
cfg = lam.get_function(FunctionName=own_arn)["Configuration"]
check(cfg["FunctionArn"] == own_arn, "A's own function by its ARN")
out = lam.invoke(FunctionName="f", Payload=json.dumps({"who": "boto3"}))
body = json.loads(out["Payload"].read())
check(body["function_arn"] == own_arn, f"a plain name is A's own function: {body['function_arn']}")

denied = ("AccessDeniedException", 403)
for what, call in [
    ("get_function", lambda: lam.get_function(FunctionName=OTHER)),
    ("get_function_configuration", lambda: lam.get_function_configuration(FunctionName=OTHER)),
    ("update_function_configuration", lambda: lam.update_function_configuration(FunctionName=OTHER, Timeout=7)),
    ("invoke", lambda: lam.invoke(FunctionName=OTHER, Payload=b"{}")),
    ("invoke (Event)", lambda: lam.invoke(FunctionName=OTHER, InvocationType="Event", Payload=b"{}")),
    ("put_function_concurrency", lambda: lam.put_function_concurrency(FunctionName=OTHER, ReservedConcurrentExecutions=1)),
    ("delete_function", lambda: lam.delete_function(FunctionName=OTHER)),
]:
    got = refused(call)
    check(got == denied, f"another account's function: {what} is refused: {got}")
print(f"{checks} checks passed")
