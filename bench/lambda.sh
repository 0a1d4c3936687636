#!/usr/bin/env bash
# The Lambda executor, measured on this machine against the cargo-lambda emulator
# (scripts/test-lambda) and Garage (scripts/test-s3), in one run:
#  1. 10,000 no-op shards (one small object a shard) with 4 `fanout lambda worker`
#     processes: wall time, invocations, shards/s, and the coordinator's CPU per invocation.
#     Target (issue 10): under 5 s end to end.
#  2. Dispatch capacity: the same 10,000 shards, one shard an invocation (--lambda-batch 1),
#     against a stand-in that answers at once (bench/lambda-standin.py): invocations/s from
#     one coordinator. Target: at least 2,000/s.
#  3. The peer: 1,000 no-op calls on Lithops' localhost backend (version 1, 2 workers)
#     beside 1,000 no-op shards through the emulator.
#  4. Cold start: from sending an invocation to its guest starting, in a fresh worker (empty
#     compile cache) and in a warm one, for the thumbnail function.
# RUNS (default 3) runs of each; medians. Needs python3 (boto3 and lithops are installed
# into the test venv when missing).
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
SHARDS=${SHARDS:-10000}
build_fanout
WASM=$(wasm_of "$ROOT/bench/noop")
THUMB=$(wasm_of "$ROOT/examples/thumbnail")
if [[ -z ${AWS_ENDPOINT_URL:-} ]]; then
	eval "$("$ROOT/scripts/test-s3" start)"
	cleanups+=("'$ROOT/scripts/test-s3' stop")
fi
eval "$("$ROOT/scripts/test-lambda" start)"
cleanups+=("'$ROOT/scripts/test-lambda' stop")
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check boto3
PREFIX=bench-lambda-$$-$RANDOM
BUCKET=${FANOUT_TEST_BUCKET:?the S3 server sets FANOUT_TEST_BUCKET}

echo "bench: uploading $SHARDS small objects to s3://$BUCKET/$PREFIX/in/" >&2
python3 - "$BUCKET" "$PREFIX" "$SHARDS" <<'PY'
import os, sys, boto3
from botocore.config import Config
from concurrent.futures import ThreadPoolExecutor
bucket, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
def put(i):
    key = f"{prefix}/in/f{i:05}.txt"
    s3.put_object(Bucket=bucket, Key=key, Body=f"file {i}\n".encode())
    if i < 1000:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/in1k/f{i:05}.txt", Body=f"file {i}\n".encode())
with ThreadPoolExecutor(32) as pool:
    list(pool.map(put, range(count)))
PY

WORKER_PIDS=()
start_workers() { # FUNCTION COUNT [ENV...]
	local function=$1 count=$2 i
	shift 2
	for ((i = 0; i < count; i++)); do
		env AWS_LAMBDA_RUNTIME_API="$FANOUT_TEST_LAMBDA_RUNTIME/$function" AWS_LAMBDA_FUNCTION_NAME="$function" \
			AWS_LAMBDA_FUNCTION_MEMORY_SIZE=2048 AWS_LAMBDA_FUNCTION_VERSION=1 "$@" \
			"$FANOUT" lambda worker </dev/null >/dev/null 2>&1 &
		WORKER_PIDS+=($!)
	done
}
stop_workers() {
	local pid
	for pid in "${WORKER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${WORKER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	WORKER_PIDS=()
}
cleanups+=("stop_workers")

# lambda_run LABEL ENDPOINT FUNCTION INPUT [FLAGS...]: one timed coordinator run; its
# summary.json is kept as $WORK/LABEL.N.json
lambda_run() {
	local label=$1 endpoint=$2 function=$3 input=$4 run
	shift 4
	run=$(grep -c "^$label|" "$WORK/times" 2>/dev/null || true)
	AWS_ENDPOINT_URL_LAMBDA=$endpoint timed "$label" "$FANOUT" run --input "s3://$BUCKET/$PREFIX/$input/" \
		--function "$WASM" --output "s3://$BUCKET/$PREFIX/out-$label-$run/" --executor lambda \
		--lambda-function "$function" --json "$@"
	python3 -c "
import json,sys
s=json.load(open('$WORK/stdout.json'))
assert s['status']=='succeeded', s['status']
json.dump(s, open('$WORK/$label.$run.json','w'))"
}
# `timed` sends stdout to /dev/null: keep the JSON summary instead.
timed() {
	local label=$1
	shift
	/usr/bin/time -f "$label|%e|%U|%S|%M" -o "$WORK/time.one" "$@" >"$WORK/stdout.json" 2>"$WORK/stderr.one" ||
		{ echo "bench: $label failed:" >&2; tail -20 "$WORK/stderr.one" >&2; exit 1; }
	cat "$WORK/time.one" >>"$WORK/times"
}

echo "bench: 1. $SHARDS no-op shards, 4 workers on the emulator" >&2
start_workers fanout-bench 4
for run in $(seq 1 "$RUNS"); do
	lambda_run emulator "$FANOUT_TEST_LAMBDA_ENDPOINT" fanout-bench in --concurrency 4
done

echo "bench: 2. dispatch capacity against the stand-in, one shard an invocation" >&2
STANDIN_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 "$ROOT/bench/lambda-standin.py" "$STANDIN_PORT" &
STANDIN=$!
cleanups+=("kill $STANDIN")
sleep 0.5
for run in $(seq 1 "$RUNS"); do
	lambda_run standin "http://127.0.0.1:$STANDIN_PORT" stand-in in --concurrency 64 --lambda-batch 1
done

echo "bench: 3. 1,000 no-op calls: fanout on the emulator, Lithops localhost (version 1, 2 workers)" >&2
lithops_setup "$WORK"
cat >"$WORK/lithops_noop.py" <<'PY'
import lithops
def noop(x):
    return x
fexec = lithops.FunctionExecutor()
futures = fexec.map(noop, range(1000))
results = fexec.get_result(futures)
assert len(results) == 1000
fexec.clean()
PY
for run in $(seq 1 "$RUNS"); do
	lambda_run emulator-1k "$FANOUT_TEST_LAMBDA_ENDPOINT" fanout-bench in1k --concurrency 4
	# Lithops' localhost runner starts `python` from PATH: the venv's.
	PATH="$LITHOPS_VENV/bin:$PATH" LITHOPS_CONFIG_FILE="$WORK/lithops.yaml" \
		timed lithops-1k "$LITHOPS_VENV/bin/python" "$WORK/lithops_noop.py"
done
stop_workers

echo "bench: 4. cold and warm starts, thumbnail function" >&2
mkdir -p "$WORK/one"
cp "$ROOT/examples/data/images/logo.png" "$WORK/one/"
python3 - "$BUCKET" "$PREFIX" "$WORK/one/logo.png" <<'PY'
import os, sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(s3={"addressing_style": "path"}))
s3.upload_file(sys.argv[3], sys.argv[1], f"{sys.argv[2]}/one/logo.png")
PY
# A job run once leaves its job.json and function in DEST; the invocations below reuse them.
start_workers fanout-cold 1
AWS_ENDPOINT_URL_LAMBDA=$FANOUT_TEST_LAMBDA_ENDPOINT "$FANOUT" run --input "s3://$BUCKET/$PREFIX/one/" \
	--function "$THUMB" --output "s3://$BUCKET/$PREFIX/thumb/" --executor lambda --lambda-function fanout-cold -q
stop_workers
for run in $(seq 1 "$RUNS"); do
	cache=$(mktemp -d "$WORK/cache.XXXXXX")
	start_workers fanout-cold 1 FANOUT_CACHE_DIR="$cache"
	sleep 0.3
	python3 - "$BUCKET" "$PREFIX" "$FANOUT_TEST_LAMBDA_ENDPOINT" >>"$WORK/starts" <<'PY'
import json, os, sys, time, urllib.request, boto3
from botocore.config import Config
bucket, prefix, endpoint = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(s3={"addressing_style": "path"}))
listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/thumb/_fanout/")["Contents"]
job_key = next(o["Key"] for o in listed if o["Key"].endswith("/job.json"))
plan_key = next(o["Key"] for o in listed if "/plan/" in o["Key"])
document = json.loads(s3.get_object(Bucket=bucket, Key=job_key)["Body"].read())
shard = json.loads(s3.get_object(Bucket=bucket, Key=plan_key)["Body"].read().splitlines()[0])
sha = document["function"]["sha256"]
def invoke(attempt):
    order = {"shard": shard, "attempt": attempt, "argv": ["thumbnails", "--max-side", "256"], "env": [],
             "staging_prefix": f"_fanout/{document['job_id']}/attempts/bench/{attempt}-{time.time_ns()}/"}
    body = json.dumps({"work": {"protocol": 1, "job_id": document["job_id"], "job": document["job"],
                                "function_key": f"_fanout/functions/{sha}.wasm", "function_sha256": sha,
                                "orders": [order]}}).encode()
    sent = time.time()
    answer = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{endpoint}/2015-03-31/functions/fanout-cold/invocations", data=body, method="POST")).read())
    result = answer["results"][0]
    assert result["outcome"]["kind"] == "ok", result
    return result["started_ms"] / 1000 - sent
cold = invoke(1)
warm = min(invoke(a) for a in range(2, 6))
print(f"{cold * 1000:.1f} {warm * 1000:.1f}")
PY
	stop_workers
done

report
python3 - "$WORK" "$SHARDS" "$RUNS" <<'PY'
import glob, json, statistics, sys
work, shards, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = {}
for line in open(f"{work}/times"):
    label, wall, user, sys_, rss = line.strip().split("|")
    times.setdefault(label, []).append((float(wall), float(user) + float(sys_)))
def summaries(label):
    return [json.load(open(p)) for p in sorted(glob.glob(f"{work}/{label}.*.json"))]
def med(values):
    return statistics.median(values)
for label, what in [("emulator", "emulator, 4 workers"), ("standin", "stand-in, batch 1")]:
    s = summaries(label)
    inv = med([x["executor"]["invocations"] for x in s])
    wall = med([w for w, _ in times[label]])
    cpu = med([c for _, c in times[label]])
    mapped = med([x["map_ms"] / 1000 for x in s])
    print(f"{what}: {shards} shards in {wall:.2f} s wall (map {mapped:.2f} s), {inv:.0f} invocations, "
          f"{shards / wall:.0f} shards/s, {inv / mapped:.0f} invocations/s in the map, "
          f"coordinator CPU {cpu:.2f} s = {cpu / inv * 1e6:.0f} us an invocation, {cpu / shards * 1e6:.0f} us a shard")
f1k, l1k = med([w for w, _ in times["emulator-1k"]]), med([w for w, _ in times["lithops-1k"]])
print(f"1,000 no-op calls: fanout on the emulator {f1k:.2f} s, Lithops localhost {l1k:.2f} s: fanout {l1k / f1k:.1f}x faster")
starts = [tuple(map(float, l.split())) for l in open(f"{work}/starts")]
print(f"invocation to guest start: cold (fresh worker, empty compile cache) median {med([c for c, _ in starts]):.0f} ms, "
      f"warm median {med([w for _, w in starts]):.1f} ms ({len(starts)} fresh workers)")
PY
