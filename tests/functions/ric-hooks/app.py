"""Served by the unmodified awslambdaric from PyPI with hooks registered
through the unmodified snapshot-restore-py from PyPI (both installed into
the code directory by the test)."""
import os
import random

import snapshot_restore_py
from snapshot_restore_py import register_after_restore, register_before_snapshot

RAN = []


@register_before_snapshot
def before_one():
    RAN.append("before-1")


@register_before_snapshot
def before_two():
    RAN.append("before-2")


@register_after_restore
def after_one():
    RAN.append("after-1")


@register_after_restore
def after_two():
    RAN.append("after-2")
    # awslambdaric does not know thaw's restore/next answer: a function that
    # needs fresh randomness reseeds in its own hook.
    random.seed()


def handler(event, context):
    return {
        "ran": RAN,
        "init_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "hooks_module": snapshot_restore_py.__file__,
        "random": random.random(),
    }
