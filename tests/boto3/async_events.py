"""Drive thaw's asynchronous invocation with the real AWS SDK for Python:
the event invoke configuration operations, their errors, and Event
invocations whose failures reach a failure destination.

Usage: python3 async_events.py ENDPOINT FUNCTIONS_DIR
Prints one line "EVENTS <json>" with the request ids of the events it sent
(the Rust test checks where each one settled). Talks to loopback only.
"""
import json
import sys

from common import Checks, error_code, make_client, zip_dir as zip_function

ENDPOINT, FUNCTIONS = sys.argv[1], sys.argv[2]
client = make_client(ENDPOINT)
raw = make_client(ENDPOINT, validate=False)
check = Checks()


def zip_dir(name):
    return zip_function(FUNCTIONS, name)


code = zip_dir("py-events")
arns = {}
for name in ["bev", "bsink"]:
    r = client.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="arn:aws:iam::000000000000:role/thaw",
        Handler="app.handler",
        Code={"ZipFile": code},
        MemorySize=256,
        Timeout=10,
    )
    arns[name] = r["FunctionArn"]

check(
    error_code(client.get_function_event_invoke_config, FunctionName="bev")
    == "ResourceNotFoundException",
    "no event invoke config yet: ResourceNotFoundException",
)
check(
    error_code(client.put_function_event_invoke_config, FunctionName="bev", MaximumRetryAttempts=5)
    == "ValidationException",
    "MaximumRetryAttempts=5: ValidationException",
)
check(
    error_code(raw.put_function_event_invoke_config, FunctionName="bev", MaximumEventAgeInSeconds=30)
    == "ValidationException",
    "MaximumEventAgeInSeconds=30: ValidationException",
)
check(
    error_code(
        client.put_function_event_invoke_config,
        FunctionName="bev",
        DestinationConfig={"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:000000000000:q"}},
    )
    == "InvalidParameterValueException",
    "an SQS destination: InvalidParameterValueException (thaw delivers to functions)",
)

r = client.put_function_event_invoke_config(
    FunctionName="bev",
    MaximumRetryAttempts=1,
    MaximumEventAgeInSeconds=3600,
    DestinationConfig={"OnFailure": {"Destination": arns["bsink"]}},
)
check(r["FunctionArn"] == arns["bev"] + ":$LATEST", "put returns the qualified ARN")
check(r["MaximumRetryAttempts"] == 1, "put returns MaximumRetryAttempts")
check(hasattr(r["LastModified"], "year"), "LastModified is a timestamp boto3 parses")
r = client.update_function_event_invoke_config(FunctionName="bev", MaximumEventAgeInSeconds=1800)
check(
    r["MaximumEventAgeInSeconds"] == 1800 and r["MaximumRetryAttempts"] == 1,
    "update merges into the configuration",
)
r = client.get_function_event_invoke_config(FunctionName="bev")
check(
    r["DestinationConfig"]["OnFailure"]["Destination"] == arns["bsink"],
    "get returns the destination",
)
r = client.list_function_event_invoke_configs(FunctionName="bev")
check(len(r["FunctionEventInvokeConfigs"]) == 1, "list returns the configuration")

ids = []
for n in range(6):
    r = client.invoke(
        FunctionName="bev",
        InvocationType="Event",
        Payload=json.dumps({"n": n, "fail": n % 2 == 0}),
    )
    check(r["StatusCode"] == 202, f"event {n} accepted with 202")
    ids.append({"n": n, "id": r["ResponseMetadata"]["RequestId"], "fail": n % 2 == 0})

print(f"checks passed: {check.passed}", flush=True)
print("EVENTS " + json.dumps(ids), flush=True)
