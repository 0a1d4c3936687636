#!/usr/bin/env bash
# Records per second from a Kafka topic (tansu, on this machine) through fanout with a no-op
# and with a small JSON-enriching function (examples/enrich), at several shard sizes, against
# a plain Python confluent-kafka consume-transform-produce loop on the same broker and data.
# Target (issue 14): fanout faster than the Python loop at any shard size, and the coordinator
# never the bottleneck: it keeps up with what the broker serves a plain consumer
# (`python loop read`), and its own CPU stays low.
source "$(dirname "$0")/lib.sh"
RECORDS=${RECORDS:-200000}
SHARDS=${SHARDS:-"1000 10000 50000"}
build_fanout
NOOP=$(wasm_of "$ROOT/bench/noop")
ENRICH=$(wasm_of "$ROOT/examples/enrich")
kafka_env=$("$ROOT/scripts/test-kafka" start)
eval "$kafka_env"
cleanups+=("'$ROOT/scripts/test-kafka' stop")
TOOL() { "$FANOUT_TEST_KAFKA_PYTHON" "$ROOT/tests/fixtures/kafka/kafka_tool.py" "$FANOUT_TEST_KAFKA" "$@"; }
TOOL create events 4
TOOL produce events 0 "$RECORDS"
echo "bench: $RECORDS records (~80 B of JSON each) over 4 partitions at $FANOUT_TEST_KAFKA; $RUNS runs each" >&2
URL=kafka://$FANOUT_TEST_KAFKA/events
group=0
for run in $(seq 1 "$RUNS"); do
	for rows in $SHARDS; do
		for fn in noop enrich; do
			wasm=$NOOP
			[[ $fn == enrich ]] && wasm=$ENRICH
			group=$((group + 1))
			rm -rf "$WORK/out"
			timed "fanout $fn rows=$rows" "$FANOUT" run --input "$URL" --function "$wasm" --output "$WORK/out" \
				--shard "rows=$rows" --kafka-start earliest --kafka-group "bench-$group" --quiet
			python3 -c "
import json,glob
s=json.load(open(glob.glob('$WORK/out/_fanout/*/summary.json')[0]))
print('fanout $fn rows=$rows', s['shards']['ok'], 'shards ok; planning (reading the topic) took', s['plan_ms'], 'ms')" >>"$WORK/plans"
		done
	done
	for mode in read noop enrich; do
		TOOL create "out-$mode-$run" 4
		/usr/bin/time -f "python loop $mode|%e|%U|%S|%M" -o "$WORK/time.one" \
			"$FANOUT_TEST_KAFKA_PYTHON" "$ROOT/tests/fixtures/kafka/kafka_tool.py" "$FANOUT_TEST_KAFKA" \
			pyloop events "out-$mode-$run" "$RECORDS" "$mode" >/dev/null
		cat "$WORK/time.one" >>"$WORK/times"
	done
done
report
sort "$WORK/plans" | uniq -c | head -20 >&2 || true
python3 - "$WORK/times" "$RECORDS" <<'PY'
import statistics, sys
walls = {}
for line in open(sys.argv[1]):
    label, wall, *_ = line.split("|")
    walls.setdefault(label, []).append(float(wall))
records = int(sys.argv[2])
rate = {label: records / statistics.median(w) for label, w in walls.items()}
for label in sorted(rate):
    print(f"{label:<28} {rate[label]:>10,.0f} records/s")
for label in sorted(rate):
    if label.startswith("fanout"):
        print(f"{label:<28} {rate[label] / rate['python loop read']:.2f}x what the broker serves a reader alone")
        fn = label.split()[1]
        print(f"{label:<28} {rate[label] / rate['python loop ' + fn]:.1f}x the Python loop ({fn})")
PY
