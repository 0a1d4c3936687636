#!/usr/bin/env bash
# What a Kubernetes job costs beyond the work, with Garage as the store (a Kubernetes job
# reads and writes S3 only), in one run:
#  1. 2,000 no-op shards on the local executor (S3 in, S3 out);
#  2. the same through `fanout k8s` (planning and storing 2 shares' requests), 2 `fanout
#     worker` processes playing the Job's 2 pods (JOB_COMPLETION_INDEX 0 and 1, 1 core
#     each), and `fanout status --follow` committing while they run: wall from `fanout k8s`
#     to the committer's exit, and the committer's lag after the last pod ended.
# No cluster runs here: pod start-up (image pull, scheduling) is not in these figures.
# RUNS (default 3), medians.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
FILES=${FILES:-2000}
build_fanout
NOOP=$(wasm_of "$ROOT/bench/noop")
COPY=$(wasm_of "$ROOT/bench/copy")
if [[ -z ${FANOUT_TEST_BUCKET:-} ]]; then
	eval "$("$ROOT/scripts/test-s3" start)"
	cleanups+=("'$ROOT/scripts/test-s3' stop")
fi
BUCKET=s3://$FANOUT_TEST_BUCKET/bench-k8s-$$
mkdir -p "$WORK/in"
python3 -c "
import os
for i in range($FILES):
    open(os.path.join('$WORK/in', f'f{i:05}.txt'), 'w').write(f'file {i}\n')"
"$FANOUT" run --input "$WORK/in" --function "$COPY" --output "$BUCKET/in/" --quiet
echo "bench: $FILES objects in $BUCKET/in/; $RUNS runs each" >&2

k8s_once() { # RUN: prints "wall lag" seconds
	local dest=$BUCKET/k8s-$1/ t0 args follower pods=() ended
	t0=$(date +%s.%N)
	"$FANOUT" k8s --input "$BUCKET/in/" --function "$NOOP" --output "$dest" --image bench --concurrency 2 \
		--json >"$WORK/job.json"
	# The pods' arguments after `worker`: DEST --job ID --count N.
	read -ra args < <(python3 -c 'import json, sys
print(" ".join(json.load(open(sys.argv[1]))["spec"]["template"]["spec"]["containers"][0]["args"][1:]))' "$WORK/job.json")
	"$FANOUT" status "$dest" --follow --quiet &
	follower=$!
	for index in 0 1; do
		JOB_COMPLETION_INDEX=$index FANOUT_WORKER_CORES=1 "$FANOUT" worker "${args[@]}" &
		pods+=($!)
	done
	wait "${pods[@]}"
	ended=$(date +%s.%N)
	wait "$follower"
	python3 -c "import time; print(f'{time.time() - $t0:.3f} {time.time() - $ended:.3f}')"
}

for run in $(seq 1 "$RUNS"); do
	echo "bench: round $run of $RUNS" >&2
	timed local "$FANOUT" run --input "$BUCKET/in/" --function "$NOOP" --output "$BUCKET/local-$run/" --quiet
	k8s_once "$run" >>"$WORK/k8s"
done
report
python3 - "$WORK/k8s" "$(median_of local)" <<'PY'
import statistics, sys
runs = [tuple(map(float, line.split())) for line in open(sys.argv[1])]
local = float(sys.argv[2])
wall = statistics.median(r[0] for r in runs)
lag = statistics.median(r[1] for r in runs)
print(f"k8s (2 pods by hand + follower): {wall:.2f} s for the job, {wall / local:.1f}x the local executor's {local:.2f} s;"
      f" the committer done {lag:.2f} s after the last pod (medians of {len(runs)})")
PY
