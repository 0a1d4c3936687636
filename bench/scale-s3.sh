#!/usr/bin/env bash
# A 100,000-object S3 prefix planned (listing paginated and streamed into the planner):
# peak RSS of `fanout plan`. Target (issue 3): at most 200 MB. Uses the server in
# AWS_ENDPOINT_URL, or starts one with scripts/test-s3; the objects are made once per
# server (under bench-scale-s3/) and reused.
source "$(dirname "$0")/lib.sh"
OBJECTS=${OBJECTS:-100000}
RUNS=${RUNS:-3}
if [[ -z ${AWS_ENDPOINT_URL:-} ]]; then
	eval "$("$ROOT/scripts/test-s3" start)"
	cleanups+=("'$ROOT/scripts/test-s3' stop")
fi
BUCKET=${FANOUT_TEST_BUCKET:-fanout-test}
PREFIX=bench-scale-s3/$OBJECTS/
build_fanout
python3 - "$BUCKET" "$PREFIX" "$OBJECTS" <<'PY'
import os, sys, concurrent.futures, boto3
from botocore.config import Config
bucket, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=64))
have = sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
if have < count:
    print(f"bench: making {count} objects under s3://{bucket}/{prefix} (once)", file=sys.stderr)
    def put(i):
        s3.put_object(Bucket=bucket, Key=f"{prefix}d{i % 100:02}/o{i:06}.txt", Body=b"x")
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        list(pool.map(put, range(count)))
PY
for run in $(seq 1 "$RUNS"); do
	timed "plan $OBJECTS objects" "$FANOUT" plan --input "s3://$BUCKET/$PREFIX" --function none.wasm --output "$WORK/out" --quiet
done
report
