"""A function behind a function URL: answers by path."""
import base64


def handler(event, context):
    path = event.get("rawPath", "")
    http = event["requestContext"]["http"]
    if path == "/json":
        return {
            "body": event.get("body"),
            "method": http["method"],
            "account": event["requestContext"]["accountId"],
            "query": event.get("queryStringParameters"),
            "cookies": event.get("cookies"),
            "user_agent": http["userAgent"],
            "invoked_arn": context.invoked_function_arn,
        }
    if path == "/binary":
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/octet-stream"},
            "body": base64.b64encode(bytes(range(256))).decode(),
            "isBase64Encoded": True,
        }
    if path == "/fail":
        raise RuntimeError("asked to fail")
    return {
        "statusCode": 201,
        "headers": {"x-thaw": "yes", "content-type": "text/plain"},
        "cookies": ["a=1", "b=2"],
        "body": "created " + path,
    }
