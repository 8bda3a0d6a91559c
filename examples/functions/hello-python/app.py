"""Sample function deployed by `thaw demo`."""
import platform

GREETING = "Hello from Python " + platform.python_version()


def handler(event, context):
    name = (event or {}).get("name", "world")
    return {"message": f"{GREETING}, {name}!", "request_id": context.aws_request_id}
