"""Benchmark function: a pure-Python compute loop (after FunctionBench's
pyaes): AES-128 in CTR mode with the pure-Python pyaes package, encrypting
and decrypting a 4 KiB message."""
import pyaes

KEY = bytes(range(16))
MESSAGE = bytes((i * 31) % 256 for i in range(4096))


def handler(event, context):
    rounds = int(event.get("rounds", 2)) if isinstance(event, dict) else 2
    for _ in range(rounds):
        ct = pyaes.AESModeOfOperationCTR(KEY).encrypt(MESSAGE)
        pt = pyaes.AESModeOfOperationCTR(KEY).decrypt(ct)
        assert pt == MESSAGE
    return {"rounds": rounds, "bytes": len(ct)}
