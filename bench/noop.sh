#!/usr/bin/env bash
# 10,000 no-op invocations, one small file a shard: fanout against `parallel -j2` running a
# native no-op per file, on the same files, in the same run. Targets (issue 2): the whole
# fanout run in at most 2 s (at most 100 us per invocation) and at least 30x parallel.
source "$(dirname "$0")/lib.sh"
need parallel
FILES=${FILES:-10000}
build_fanout
WASM=$(wasm_of "$ROOT/bench/noop")
NATIVE=$(native_of "$ROOT/bench/noop")
mkdir -p "$WORK/in"
python3 -c "
import os
for i in range($FILES):
    open(os.path.join('$WORK/in', f'f{i:05}.txt'), 'w').write(f'file {i}\n')"
echo "bench: $FILES files in $WORK/in; $RUNS runs each" >&2
for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK/out"
	timed fanout "$FANOUT" run --input "$WORK/in" --function "$WASM" --output "$WORK/out" --quiet
	[[ $(tail -1 "$WORK/out"/_fanout/*/report.csv | cut -d, -f2) == ok ]] || { echo "bench: fanout run incomplete" >&2; exit 1; }
done
for run in $(seq 1 "$((RUNS < 3 ? RUNS : 3))"); do
	timed "parallel -j2" sh -c "cd '$WORK/in' && ls | parallel -j2 '$NATIVE' {}"
done
report
python3 -c "
f=$(median_of fanout); p=$(median_of 'parallel')
print(f'fanout: {f:.3f} s for $FILES invocations = {f/$FILES*1e6:.0f} us each (target <= 100 us, <= 2 s)')
print(f'parallel -j2 / fanout = {p/f:.1f}x (target >= 30x)')"
