"""Drive thaw's function URLs with the real AWS SDK for Python and plain
HTTP: configure a public URL and an AWS_IAM one on an alias, call them
(signed with botocore's SigV4 for the IAM one), and the errors.

Usage: python3 function_urls.py ENDPOINT FUNCTIONS_DIR
Talks to loopback only: a URL's host name is sent as the Host header of a
connection to the daemon's own address.
"""
import http.client
import json
import sys
import urllib.parse

import botocore.auth
import botocore.awsrequest
import botocore.credentials

from common import TEST_KEY_ID, TEST_SECRET, Checks, error_code, make_client, zip_dir

ENDPOINT, FUNCTIONS = sys.argv[1], sys.argv[2]
client = make_client(ENDPOINT)
check = Checks()
daemon = urllib.parse.urlsplit(ENDPOINT)


def call(url, method="GET", path="/", body=b"", headers=None, sign=False):
    """Sends a request for `url` + `path` to the daemon's own address."""
    host = urllib.parse.urlsplit(url).netloc
    headers = dict(headers or {})
    headers["Host"] = host
    if sign:
        req = botocore.awsrequest.AWSRequest(
            method=method, url=f"http://{host}{path}", data=body, headers=headers
        )
        creds = botocore.credentials.Credentials(TEST_KEY_ID, TEST_SECRET)
        botocore.auth.SigV4Auth(creds, "lambda", "us-east-1").add_auth(req)
        headers = dict(req.headers.items())
    conn = http.client.HTTPConnection(daemon.hostname, daemon.port, timeout=60)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    out = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), resp.headers)
    conn.close()
    return out


client.create_function(
    FunctionName="web",
    Runtime="python3.11",
    Role="arn:aws:iam::000000000000:role/thaw",
    Handler="app.handler",
    Code={"ZipFile": zip_dir(FUNCTIONS, "py-web")},
    Publish=True,
)
public = client.create_function_url_config(
    FunctionName="web",
    AuthType="NONE",
    Cors={"AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "POST"]},
)
url = public["FunctionUrl"]
check(".lambda-url.us-east-1." in url, f"CreateFunctionUrlConfig gives a URL: {url}")
check(
    error_code(client.create_function_url_config, FunctionName="web", AuthType="NONE")
    == "ResourceConflictException",
    "a second URL on $LATEST: ResourceConflictException",
)
check(
    error_code(client.create_function_url_config, FunctionName="web", AuthType="NONE",
               InvokeMode="RESPONSE_STREAM") is not None,
    "RESPONSE_STREAM is refused, not served buffered",
)

status, headers, body, _ = call(url, "POST", "/json?a=1", b'{"x": 1}',
                                {"User-Agent": "thaw-test", "Cookie": "s=1"})
answer = json.loads(body)
check(status == 200 and headers["content-type"] == "application/json", "a JSON answer is a 200")
check(answer["body"] == '{"x": 1}' and answer["method"] == "POST", "the function got the body and method")
check(answer["query"] == {"a": "1"} and answer["cookies"] == ["s=1"], "and the query and cookies")
check(answer["account"] == "anonymous" and answer["user_agent"] == "thaw-test", "an anonymous caller")
status, headers, body, raw = call(url, "GET", "/made", headers={"Origin": "https://app.example"})
check(status == 201 and body == b"created /made", "a response object gives status and body")
check(headers["x-thaw"] == "yes" and raw.get_all("set-cookie") == ["a=1", "b=2"], "headers and cookies")
check(headers.get("access-control-allow-origin") == "https://app.example", "CORS for an allowed origin")
status, _, body, _ = call(url, "GET", "/binary")
check(status == 200 and body == bytes(range(256)), "a base64 body arrives as bytes")
status, _, body, _ = call(url, "GET", "/fail")
check(status == 502, "a function error is a 502")
status, _, body, _ = call(url, "POST", "/thaw/v1/accounts", b'{"Name": "x"}')
check(status == 201 and body == b"created /thaw/v1/accounts",
      "a URL's host never reaches the daemon's own routes (accounts included)")

# An AWS_IAM URL on an alias: only signed requests of the account.
client.create_alias(FunctionName="web", Name="live", FunctionVersion="1")
private = client.create_function_url_config(FunctionName="web", Qualifier="live", AuthType="AWS_IAM")
check(private["FunctionArn"].endswith(":function:web:live"), "the alias's URL names the alias")
status, _, _, _ = call(private["FunctionUrl"], "GET", "/json")
check(status == 403, "an unsigned request to an AWS_IAM URL: 403")
status, _, body, _ = call(private["FunctionUrl"], "POST", "/json", b"signed", sign=True)
answer = json.loads(body)
check(status == 200 and answer["account"] == "000000000000", "a signed request runs, as the account")
check(answer["invoked_arn"].endswith(":function:web:live"), "through the alias")

got = client.get_function_url_config(FunctionName="web", Qualifier="live")
check(got["AuthType"] == "AWS_IAM" and got["FunctionUrl"] == private["FunctionUrl"], "GetFunctionUrlConfig")
urls = client.list_function_url_configs(FunctionName="web")["FunctionUrlConfigs"]
check(sorted(u["FunctionUrl"] for u in urls) == sorted([url, private["FunctionUrl"]]), "ListFunctionUrlConfigs")
updated = client.update_function_url_config(FunctionName="web", AuthType="AWS_IAM")
check(updated["AuthType"] == "AWS_IAM" and updated["FunctionUrl"] == url, "UpdateFunctionUrlConfig keeps the URL")
status, _, _, _ = call(url, "GET", "/json")
check(status == 403, "now the $LATEST URL wants a signature too")
client.delete_function_url_config(FunctionName="web")
status, _, _, _ = call(url, "GET", "/json")
check(status == 404, "a deleted URL: 404")
check(
    error_code(client.get_function_url_config, FunctionName="web") == "ResourceNotFoundException",
    "its configuration is gone",
)

print(f"checks passed: {check.passed}", flush=True)
