# A function whose memory use depends on its input: init fills 8,192 pages
# (32 MiB) with tagged values; an invocation reads pages [from, to) and
# returns the sum of their tags. A working set recorded for one range must
# still give correct sums for any other.
PAGE = 4096
N = 8192
buf = bytearray(N * PAGE)
for i in range(N):
    buf[i * PAGE:i * PAGE + 8] = (i * 7919 + 13).to_bytes(8, "little")


def handler(event, context):
    a = int(event.get("from", 0))
    b = int(event.get("to", 256))
    total = sum(int.from_bytes(buf[i * PAGE:i * PAGE + 8], "little") for i in range(a, b))
    return {"from": a, "to": b, "sum": total}
