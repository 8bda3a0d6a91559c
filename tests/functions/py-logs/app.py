"""Logs at every level, with logging and print."""
import logging

logger = logging.getLogger("app")


def handler(event, context):
    logger.info("quiet %s", event.get("n"))
    logger.warning("loud %s", event.get("n"))
    print("plain print")
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("caught")
    return {"ok": True}
