print("about to fail during init")
raise RuntimeError("init exploded")


def handler(event, context):
    return "unreachable"
