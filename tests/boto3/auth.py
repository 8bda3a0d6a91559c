"""Only signed requests reach thaw: boto3 with the right key works; a wrong
secret, an unknown key and an unsigned request are refused with Lambda's
codes. Usage: python3 auth.py ENDPOINT ACCESS_KEY_ID SECRET
"""
import sys

import boto3
import botocore.config
from botocore import UNSIGNED
from botocore.exceptions import ClientError

ENDPOINT, KEY, SECRET = sys.argv[1], sys.argv[2], sys.argv[3]


def client(key, secret, signed=True):
    cfg = botocore.config.Config(retries={"max_attempts": 0})
    if not signed:
        cfg = cfg.merge(botocore.config.Config(signature_version=UNSIGNED))
    return boto3.client(
        "lambda",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=cfg,
    )


def refused(c):
    try:
        c.list_functions()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None


checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}", flush=True)


fns = client(KEY, SECRET).list_functions()["Functions"]
check(isinstance(fns, list), "the right key lists functions")
got = refused(client(KEY, SECRET + "x"))
check(got == ("InvalidSignatureException", 403), f"a wrong secret is refused: {got}")
got = refused(client("AKIDNOBODYATALL00001", SECRET))
check(got == ("UnrecognizedClientException", 403), f"an unknown key is refused: {got}")
got = refused(client(KEY, SECRET, signed=False))
check(got == ("MissingAuthenticationTokenException", 403), f"an unsigned request is refused: {got}")
got = refused(client(KEY, SECRET))
check(got is None, "the right key still works")
print(f"{checks} checks passed")
