#!/usr/bin/env bash
# The cloud array engines' overhead through their stand-ins (tests/fixtures/engines/standin.py:
# Cloud Run Jobs, Code Engine, AWS Batch, each checking requests and starting one `fanout
# worker` process an array task), against the local executor, in one run: FILES no-op shards
# (one small object a shard, default 2,000) from and to the local S3 server, with CONCURRENCY
# array tasks (default 2, this machine's cores). What it measures is fanout's side of an
# array (requests stored, the array followed, answers committed), not a cloud's scheduling.
# Uses the server in AWS_ENDPOINT_URL, or starts one with scripts/test-s3. RUNS (3), medians.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
FILES=${FILES:-2000}
CONCURRENCY=${CONCURRENCY:-2}
if [[ -z ${AWS_ENDPOINT_URL:-} ]]; then
	eval "$("$ROOT/scripts/test-s3" start)"
	cleanups+=("'$ROOT/scripts/test-s3' stop")
fi
BUCKET=${FANOUT_TEST_BUCKET:-fanout-test}
build_fanout
WASM=$(wasm_of "$ROOT/bench/noop")
RUN_ID=bench-engines-$$
mkdir -p "$WORK/in"
python3 -c "
import os
for i in range($FILES):
    open(os.path.join('$WORK/in', f'f{i:05}.txt'), 'w').write(f'file {i}\n')"
python3 - "$WORK/in" "$BUCKET" "$RUN_ID/in/" <<'PY'
import os, sys, boto3
from botocore.config import Config
from concurrent.futures import ThreadPoolExecutor
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
root, bucket, prefix = sys.argv[1:]
with ThreadPoolExecutor(32) as pool:
    list(pool.map(lambda f: s3.upload_file(os.path.join(root, f), bucket, prefix + f), os.listdir(root)))
PY
IN=s3://$BUCKET/$RUN_ID/in/

# standin ENGINE: starts the stand-in for ENGINE, sets PORT
standin() {
	rm -f "$WORK/port"
	STANDIN_SECRET=bench-key STANDIN_PROJECT=bench STANDIN_REGION=us-south STANDIN_JOB=fanout \
		STANDIN_QUEUE=bench-queue STANDIN_DEFINITION=fanout-worker \
		python3 "$ROOT/tests/fixtures/engines/standin.py" "$1" --fanout "$FANOUT" --log "$WORK/requests-$1.jsonl" \
		--port-file "$WORK/port" </dev/null &
	local pid=$!
	cleanups+=("kill $pid 2>/dev/null")
	for _ in $(seq 1 200); do [[ -s $WORK/port ]] && break; sleep 0.05; done
	PORT=$(cat "$WORK/port")
}

echo "bench: $FILES no-op shards, $CONCURRENCY array tasks, $RUNS runs each" >&2
for run in $(seq 1 "$RUNS"); do
	timed local "$FANOUT" run --input "$IN" --function "$WASM" --output "s3://$BUCKET/$RUN_ID/local-$run/" --quiet
done
standin code-engine
for run in $(seq 1 "$RUNS"); do
	timed code-engine env CODE_ENGINE_URL="http://127.0.0.1:$PORT/v2" CODE_ENGINE_AUTH_URL="http://127.0.0.1:$PORT" \
		IBMCLOUD_API_KEY=bench-key "$FANOUT" run --input "$IN" --function "$WASM" \
		--output "s3://$BUCKET/$RUN_ID/ce-$run/" --quiet --executor code-engine --project bench --region us-south \
		--engine-job fanout --concurrency "$CONCURRENCY"
done
standin cloud-run
for run in $(seq 1 "$RUNS"); do
	timed cloud-run env GCE_METADATA_HOST="127.0.0.1:$PORT" CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN="http://127.0.0.1:$PORT" \
		"$FANOUT" run --input "$IN" --function "$WASM" --output "s3://$BUCKET/$RUN_ID/cr-$run/" \
		--quiet --executor cloud-run --project bench --region us-south --engine-job fanout --concurrency "$CONCURRENCY"
done
standin aws-batch
for run in $(seq 1 "$RUNS"); do
	timed aws-batch env AWS_ENDPOINT_URL_BATCH="http://127.0.0.1:$PORT" "$FANOUT" run --input "$IN" \
		--function "$WASM" --output "s3://$BUCKET/$RUN_ID/batch-$run/" --quiet --executor aws-batch \
		--job-queue bench-queue --engine-job fanout-worker --concurrency "$CONCURRENCY"
done
report
