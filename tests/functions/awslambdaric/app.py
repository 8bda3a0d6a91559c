"""Served by the unmodified awslambdaric runtime client from PyPI."""
import awslambdaric


def handler(event, context):
    return {"client": "awslambdaric", "request_id": context.aws_request_id, "echo": event,
            "ric_file": awslambdaric.__file__}
