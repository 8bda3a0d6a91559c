"""Drive thaw's versions and aliases with the real AWS SDK for Python, as a
blue-green deployment would: publish on create and on update, invoke each
version and an alias with weighted routing, move the alias, delete a
version, and the errors on the way.

Usage: python3 versions.py ENDPOINT FUNCTIONS_DIR
Talks to loopback only. The function is left deployed (`ver`, versions 2
and 3, alias `live` on 3) for the Rust test to check after a restart.
"""
import json
import sys

from common import Checks, error_code, make_client, zip_dir

ENDPOINT, FUNCTIONS = sys.argv[1], sys.argv[2]
client = make_client(ENDPOINT)
check = Checks()


def code(mark):
    return zip_dir(FUNCTIONS, "py-version", {"app.py": ('MARK = "v1"', f'MARK = "{mark}"')})


def run(qualifier=None):
    kwargs = {"FunctionName": "ver", "Payload": b"{}"}
    if qualifier is not None:
        kwargs["Qualifier"] = qualifier
    r = client.invoke(**kwargs)
    assert "FunctionError" not in r, r["Payload"].read()
    return r["ExecutedVersion"], json.loads(r["Payload"].read())


v1 = client.create_function(
    FunctionName="ver",
    Runtime="python3.11",
    Role="arn:aws:iam::000000000000:role/thaw",
    Handler="app.handler",
    Code={"ZipFile": code("v1")},
    SnapStart={"ApplyOn": "PublishedVersions"},
    Publish=True,
)
check(v1["Version"] == "1", "Publish=True on create answers with version 1")
check(v1["SnapStart"]["OptimizationStatus"] == "On", "SnapStart applies to version 1")
latest = client.get_function_configuration(FunctionName="ver")
check(latest["SnapStart"]["OptimizationStatus"] == "Off", "SnapStart never applies to $LATEST")
arn = v1["FunctionArn"].rsplit(":", 1)[0]
check(v1["FunctionArn"] == arn + ":1", "version 1's ARN is qualified")

v2 = client.update_function_code(FunctionName="ver", ZipFile=code("v2"), Publish=True)
check(v2["Version"] == "2", "Publish=True on update answers with version 2")
same = client.publish_version(FunctionName="ver")
check(same["Version"] == "2", "publishing an unchanged $LATEST returns the last version")
check(
    error_code(client.publish_version, FunctionName="ver", CodeSha256=v1["CodeSha256"])
    == "PreconditionFailedException",
    "PublishVersion with another CodeSha256: PreconditionFailedException",
)
client.update_function_code(FunctionName="ver", ZipFile=code("v3"))
v3 = client.publish_version(FunctionName="ver", Description="third")
check(v3["Version"] == "3" and v3["Description"] == "third", "PublishVersion makes version 3")

versions = client.list_versions_by_function(FunctionName="ver")["Versions"]
check([v["Version"] for v in versions] == ["$LATEST", "1", "2", "3"], "ListVersionsByFunction")
paginator = client.get_paginator("list_versions_by_function")
pages = list(paginator.paginate(FunctionName="ver", PaginationConfig={"PageSize": 2}))
check(
    [v["Version"] for p in pages for v in p["Versions"]] == ["$LATEST", "1", "2", "3"],
    "the paginator walks the versions two at a time",
)

# Every version runs its own code, environment and context.
for q, mark in [("1", "v1"), ("2", "v2"), ("3", "v3"), ("$LATEST", "v3"), (None, "v3")]:
    executed, body = run(q)
    want = q or "$LATEST"
    check(
        executed == want and body["mark"] == mark and body["context_version"] == want,
        f"Qualifier={q}: ran version {executed} with code {body['mark']}",
    )
    check(body["env_version"] == want and body["init_version"] == want, f"{want}: AWS_LAMBDA_FUNCTION_VERSION")
    check(f"[{want}]" in body["log_stream"], f"{want}: the log stream names the version")
r = client.invoke(FunctionName=arn + ":2", Payload=b"{}")
check(r["ExecutedVersion"] == "2", "a qualified ARN as FunctionName")
check(
    error_code(client.invoke, FunctionName="ver", Qualifier="9") == "ResourceNotFoundException",
    "a version that does not exist: ResourceNotFoundException",
)
check(
    error_code(client.invoke, FunctionName="ver:1", Qualifier="2") == "InvalidParameterValueException",
    "two different qualifiers: InvalidParameterValueException",
)
c = client.get_function(FunctionName="ver", Qualifier="1")
check(
    c["Configuration"]["Version"] == "1" and c["Configuration"]["CodeSha256"] == v1["CodeSha256"],
    "GetFunction of version 1 has its code",
)

# An alias with weighted routing sends invocations to both versions.
live = client.create_alias(
    FunctionName="ver",
    Name="live",
    FunctionVersion="2",
    RoutingConfig={"AdditionalVersionWeights": {"3": 0.5}},
)
check(live["AliasArn"] == arn + ":live", "CreateAlias returns the alias ARN")
check(
    error_code(client.create_alias, FunctionName="ver", Name="live", FunctionVersion="1")
    == "ResourceConflictException",
    "an alias that exists: ResourceConflictException",
)
check(
    error_code(client.create_alias, FunctionName="ver", Name="next", FunctionVersion="7")
    == "ResourceNotFoundException",
    "an alias of a missing version: ResourceNotFoundException",
)
seen = {}
for _ in range(40):
    executed, body = run("live")
    seen[executed] = seen.get(executed, 0) + 1
    check(body["invoked_arn"] == arn + ":live", "the function sees the alias's ARN")
check(set(seen) == {"2", "3"}, f"weights 0.5/0.5 reach both versions: {seen}")

# Blue-green: move the alias to version 3 alone.
moved = client.update_alias(
    FunctionName="ver",
    Name="live",
    FunctionVersion="3",
    RoutingConfig={"AdditionalVersionWeights": {}},
    RevisionId=live["RevisionId"],
)
check(
    moved["FunctionVersion"] == "3"
    and not moved.get("RoutingConfig", {}).get("AdditionalVersionWeights"),
    "UpdateAlias moves it and drops the routing",
)
check(
    error_code(client.update_alias, FunctionName="ver", Name="live", RevisionId=live["RevisionId"])
    == "PreconditionFailedException",
    "UpdateAlias with a stale RevisionId: PreconditionFailedException",
)
check(all(run("live")[0] == "3" for _ in range(5)), "the alias now runs version 3 only")
check(client.get_alias(FunctionName="ver", Name="live")["FunctionVersion"] == "3", "GetAlias")
client.create_alias(FunctionName="ver", Name="old", FunctionVersion="1")
check(
    [a["Name"] for a in client.list_aliases(FunctionName="ver")["Aliases"]] == ["live", "old"],
    "ListAliases",
)
check(
    [a["Name"] for a in client.list_aliases(FunctionName="ver", FunctionVersion="1")["Aliases"]] == ["old"],
    "ListAliases by version",
)

# A version an alias points to stays; once free, it can be deleted.
check(
    error_code(client.delete_function, FunctionName="ver", Qualifier="1") == "ResourceConflictException",
    "deleting a version an alias uses: ResourceConflictException",
)
client.delete_alias(FunctionName="ver", Name="old")
client.delete_function(FunctionName="ver", Qualifier="1")
check(
    error_code(client.invoke, FunctionName="ver", Qualifier="1") == "ResourceNotFoundException",
    "a deleted version is gone",
)
check(
    error_code(client.delete_function, FunctionName="ver", Qualifier="$LATEST")
    == "InvalidParameterValueException",
    "$LATEST is deleted only with the function",
)
check(run("2")[1]["mark"] == "v2", "the other versions still run")

print(f"checks passed: {check.passed}", flush=True)
