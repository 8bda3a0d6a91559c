"""Benchmark function with a real dependency: the AWS SDK for Python. Importing
boto3 and creating a client is a classic, sizeable Python cold-start cost."""
import boto3

S3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def handler(event, context):
    return {"boto3": boto3.__version__, "operations": len(S3.meta.service_model.operation_names)}
