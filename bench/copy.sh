#!/usr/bin/env bash
# S3 to S3 copy-through on the local S3 server: fanout running a function that copies /in to
# /out, against `rclone copy` with server-side copy disabled (so that it too downloads and
# uploads every byte) and the same number of transfers, in the same run. Two datasets:
# 2,000 objects of 256 KiB and 20 objects of 64 MiB. Target (issue 3): >= 0.8x rclone's MB/s.
# Uses the server in AWS_ENDPOINT_URL, or starts one with scripts/test-s3.
source "$(dirname "$0")/lib.sh"
need rclone
RUNS=${RUNS:-3}
SMALL=${SMALL:-2000}
LARGE=${LARGE:-20}
TRANSFERS=${TRANSFERS:-16}
if [[ -z ${AWS_ENDPOINT_URL:-} ]]; then
	eval "$("$ROOT/scripts/test-s3" start)"
	cleanups+=("'$ROOT/scripts/test-s3' stop")
fi
BUCKET=${FANOUT_TEST_BUCKET:-fanout-test}
build_fanout
WASM=$(wasm_of "$ROOT/bench/copy")
export RCLONE_CONFIG_T_TYPE=s3 RCLONE_CONFIG_T_PROVIDER=Other RCLONE_CONFIG_T_ENDPOINT=$AWS_ENDPOINT_URL \
	RCLONE_CONFIG_T_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_T_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
	RCLONE_CONFIG_T_REGION=${AWS_REGION:-us-east-1} RCLONE_CONFIG_T_FORCE_PATH_STYLE=true
RCLONE="env -u AWS_CA_BUNDLE rclone"
RUN_ID=bench-copy-$$
cleanups+=("$RCLONE purge 'T:$BUCKET/$RUN_ID' -q || true")
make_dataset() { # NAME COUNT SIZE_BYTES
	mkdir -p "$WORK/$1"
	python3 -c "
import os
for i in range($2):
    with open(os.path.join('$WORK/$1', f'o{i:05}.bin'), 'wb') as f:
        f.write(os.urandom($3))"
	$RCLONE copy "$WORK/$1" "T:$BUCKET/$RUN_ID/$1/src" --transfers "$TRANSFERS" -q
}
make_dataset small "$SMALL" $((256 << 10))
make_dataset large "$LARGE" $((64 << 20))
for set in small large; do
	bytes=$(du -sb "$WORK/$set" | cut -f1)
	echo "$set $bytes" >>"$WORK/sizes"
	for run in $(seq 1 "$RUNS"); do
		timed "fanout-$set" "$FANOUT" run --input "s3://$BUCKET/$RUN_ID/$set/src/" --function "$WASM" \
			--output "s3://$BUCKET/$RUN_ID/$set/fanout-$run/" --quiet
		timed "rclone-$set" $RCLONE copy "T:$BUCKET/$RUN_ID/$set/src" "T:$BUCKET/$RUN_ID/$set/rclone-$run" \
			--disable copy --transfers "$TRANSFERS" --checkers "$TRANSFERS" -q
	done
done
report
python3 -c "
import statistics
sizes = dict(l.split() for l in open('$WORK/sizes'))
times = {}
for line in open('$WORK/times'):
    label, wall, *_ = line.strip().split('|')
    times.setdefault(label, []).append(float(wall))
for s in ('small', 'large'):
    mb = int(sizes[s]) / 1e6
    f = statistics.median(times['fanout-' + s]); r = statistics.median(times['rclone-' + s])
    print(f'{s}: fanout {mb/f:.0f} MB/s, rclone {mb/r:.0f} MB/s, ratio {r/f:.2f}x (target >= 0.8x)')"
