#!/usr/bin/env bash
# 100,000 shards planned and tracked: a no-op job over 100,000 files; peak RSS of
# `fanout plan` and of `fanout run`. Target (issue 2): at most 200 MB.
source "$(dirname "$0")/lib.sh"
FILES=${FILES:-100000}
RUNS=${RUNS:-1}
build_fanout
WASM=$(wasm_of "$ROOT/bench/noop")
mkdir -p "$WORK/in"
python3 -c "
import os
for d in range(100):
    os.makedirs(os.path.join('$WORK/in', f'd{d:02}'), exist_ok=True)
for i in range($FILES):
    open(os.path.join('$WORK/in', f'd{i % 100:02}', f'f{i:06}.txt'), 'w').write('x')"
echo "bench: $FILES files in $WORK/in" >&2
for run in $(seq 1 "$RUNS"); do
	timed "plan" "$FANOUT" plan --input "$WORK/in" --function "$WASM" --output "$WORK/out" --quiet
	rm -rf "$WORK/out"
	timed "run" "$FANOUT" run --input "$WORK/in" --function "$WASM" --output "$WORK/out" --quiet
done
report
rows=$(($(wc -l <"$WORK"/out/_fanout/*/report.csv) - 1))
echo "report.csv rows: $rows (expected $FILES)"
[[ $rows == "$FILES" ]]
