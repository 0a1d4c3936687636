#!/usr/bin/env bash
# The Slurm executor's overhead, on the one-machine cluster of scripts/test-slurm (three
# emulated nodes of this host's cores), in one run:
#  1. 2,000 no-op shards (one small file a shard) on the local executor, and through Slurm
#     with as many array tasks at once as the cluster has cores, and with 64;
#  2. the time from starting `fanout run` to its first shard running (the earliest `started`
#     in report.csv), on each.
# Inputs and outputs are local paths: every node is this machine, so the file system is
# shared, and the figures are the engine's, not the store's. RUNS (default 3), medians.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
FILES=${FILES:-2000}
build_fanout
WASM=$(wasm_of "$ROOT/bench/noop")
if [[ -z ${SLURM_CONF:-} ]]; then
	eval "$("$ROOT/scripts/test-slurm" start)"
	cleanups+=("'$ROOT/scripts/test-slurm' stop")
fi
CORES=$(sinfo -h -o '%C' | awk -F/ '{print $4}')
mkdir -p "$WORK/in"
python3 -c "
import os
for i in range($FILES):
    open(os.path.join('$WORK/in', f'f{i:05}.txt'), 'w').write(f'file {i}\n')"
echo "bench: $FILES files; the cluster has $CORES cores; $RUNS runs each" >&2

# first_shard LABEL OUT T0: seconds from T0 to the first shard's start, appended to $WORK/first
first_shard() {
	python3 - "$1" "$2" "$3" >>"$WORK/first" <<'PY'
import csv, datetime, glob, sys
label, out, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = list(csv.DictReader(open(glob.glob(f"{out}/_fanout/*/report.csv")[0])))
assert len(rows) and all(r["status"] == "ok" for r in rows), f"{label}: not every shard ok"
first = min(datetime.datetime.fromisoformat(r["started"].replace("Z", "+00:00")).timestamp() for r in rows)
print(f"{label} {first - t0:.3f}")
PY
}

one() { # LABEL FLAGS...
	local label=$1 out=$WORK/out-$1 t0
	shift
	rm -rf "$out"
	t0=$(date +%s.%N)
	timed "$label" "$FANOUT" run --input "$WORK/in" --function "$WASM" --output "$out" --quiet "$@"
	first_shard "$label" "$out" "$t0"
}

for run in $(seq 1 "$RUNS"); do
	echo "bench: round $run of $RUNS" >&2
	one local
	one slurm-cores --executor slurm --concurrency "$CORES"
	one slurm-64 --executor slurm --concurrency 64
done
report
python3 - "$WORK/first" <<PY
import statistics, sys
firsts = {}
for line in open(sys.argv[1]):
    label, seconds = line.split()
    firsts.setdefault(label, []).append(float(seconds))
for label, values in firsts.items():
    print(f"{label:<14} first shard running after {statistics.median(values):.3f} s (median of {len(values)})")
local = $(median_of local)
for label in ["slurm-cores", "slurm-64"]:
    wall = {"slurm-cores": $(median_of slurm-cores), "slurm-64": $(median_of slurm-64)}[label]
    print(f"{label}: {wall:.2f} s for $FILES shards, {wall - local:+.2f} s and {wall / local:.1f}x the local executor's {local:.2f} s")
PY
