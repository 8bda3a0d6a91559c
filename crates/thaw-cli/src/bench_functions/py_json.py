"""Benchmark function: JSON serialization (after FunctionBench's
json_dumps_loads). Init builds a document of 2,000 records; each invocation
serializes it and parses it back."""
import json

DOC = {
    "records": [
        {
            "id": i,
            "name": f"record-{i}",
            "tags": [f"t{j}" for j in range(i % 7)],
            "score": i * 0.37,
            "nested": {"a": i, "b": str(i) * 3, "c": [i, i + 1, i + 2]},
        }
        for i in range(2000)
    ]
}


def handler(event, context):
    text = json.dumps(DOC)
    back = json.loads(text)
    return {"bytes": len(text), "records": len(back["records"])}
