"""Says which version of the function ran it: the code's MARK (the test
rewrites it between versions), the version its environment and context
name, and the ARN it was invoked by."""
import os

MARK = "v1"
VERSION_AT_INIT = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")


def handler(event, context):
    return {
        "mark": MARK,
        "init_version": VERSION_AT_INIT,
        "env_version": os.environ.get("AWS_LAMBDA_FUNCTION_VERSION"),
        "context_version": context.function_version,
        "invoked_arn": context.invoked_function_arn,
        "log_stream": context.log_stream_name,
    }
