"""An event handler for the asynchronous-invocation tests.

An event {"n": N, "fail": bool, "sleep": seconds} returns N or raises; a
destination record (what thaw sends to OnSuccess / OnFailure) is logged as
one SETTLED line naming the event it settles.
"""
import json
import time


def handler(event, context):
    if "requestContext" in event:
        rc = event["requestContext"]
        print("SETTLED " + json.dumps({
            "id": rc["requestId"],
            "condition": rc["condition"],
            "runs": rc["approximateInvokeCount"],
            "n": event.get("requestPayload", {}).get("n"),
        }))
        return "recorded"
    time.sleep(event.get("sleep", 0))
    if event.get("fail"):
        raise RuntimeError("asked to fail: %d" % event["n"])
    return event["n"]
