"""What the boto3 scripts share: a client for a thaw daemon on loopback
signed with the test key, a check that counts, error codes of failed calls,
and zips of the test functions."""
import io
import os
import sys
import zipfile

import boto3
import botocore.config
from botocore.exceptions import ClientError

TEST_KEY_ID = "AKIDTHAWTEST00000001"
TEST_SECRET = "not-a-real-secret-for-thaw-tests-0000000"


def make_client(endpoint, validate=True):
    assert endpoint.startswith("http://127.0.0.1:"), endpoint
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=TEST_KEY_ID,
        aws_secret_access_key=TEST_SECRET,
        config=botocore.config.Config(
            retries={"max_attempts": 0},
            read_timeout=60,
            parameter_validation=validate,
        ),
    )


class Checks:
    """Counts passed checks; the first failed one ends the script."""

    def __init__(self):
        self.passed = 0

    def __call__(self, cond, what):
        if not cond:
            print(f"FAIL: {what}", flush=True)
            sys.exit(1)
        self.passed += 1
        print(f"ok: {what}", flush=True)


def error_code(fn, *args, **kwargs):
    """The error code `fn` fails with, or None when it succeeds."""
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def zip_dir(functions, name, replace=None):
    """A zip of the test function `name`; `replace` maps a file name to a
    (old, new) text substitution made on the way."""
    buf = io.BytesIO()
    root = os.path.join(functions, name)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for dirpath, _, files in os.walk(root):
            for f in files:
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, root)
                if replace and rel in replace:
                    old, new = replace[rel]
                    with open(full) as src:
                        text = src.read()
                    assert old in text, (rel, old)
                    z.writestr(rel, text.replace(old, new))
                else:
                    z.write(full, rel)
    return buf.getvalue()
