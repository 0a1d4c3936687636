#!/usr/bin/env python3
"""Python jsonschema 4.26, one process: records/s of parse + validate (errors collected only
for invalid records, as the function does). Usage: bench_py.py DATA.jsonl SCHEMA.json"""
import json, sys, time
from jsonschema import Draft202012Validator

lines = open(sys.argv[1], "rb").read().splitlines()
v = Draft202012Validator(json.load(open(sys.argv[2])))
t = time.perf_counter()
valid = rejected = 0
for line in lines:
    if not line.strip():
        continue
    try:
        rec = json.loads(line)
    except ValueError:
        rejected += 1; continue
    if v.is_valid(rec):
        valid += 1
    else:
        errs = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(rec)]
        rejected += 1
dt = time.perf_counter() - t
print(json.dumps({"tool": "python-jsonschema", "records": valid + rejected, "valid": valid,
                  "rejected": rejected, "seconds": round(dt, 3), "records_per_s": round((valid + rejected) / dt)}))
