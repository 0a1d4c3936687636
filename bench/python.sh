#!/usr/bin/env bash
# Python functions (issue 24), in one run:
#  1. the cost of a shard: a no-op script over COUNT (default 300) tiny files, through
#     `fanout run --python` and as host CPython under `parallel -j2` (one process a file);
#  2. a stdlib word count (jobs/fn/wordfreq.py, top 10 words a file) over a 200-file corpus:
#     fanout --python (one shard a file), the same script under `parallel -j2` in host
#     CPython, and the same function through Lithops' map on its localhost backend (2 worker
#     processes). fanout's outputs are checked byte for byte against parallel's first.
# The corpus: FILES (200) files of FILE_KB (400) KiB from the Debian changelogs under
# /usr/share/doc, (bench/lib.sh's make_corpus). RUNS (default 5) runs of each, medians.
source "$(dirname "$0")/lib.sh"
need parallel
FILES=${FILES:-200}
FILE_KB=${FILE_KB:-400}
COUNT=${COUNT:-300}
SCRIPT=$ROOT/jobs/fn/wordfreq.py
# The interpreter itself: a version manager's `python3` shim costs ~60 ms a start (pyenv's does).
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
build_fanout
lithops_setup "$WORK"
VENV=$LITHOPS_VENV

CORPUS=$WORK/corpus
make_corpus "$CORPUS" "$FILES" "$FILE_KB"
mkdir -p "$WORK/tiny"
for i in $(seq 1 "$COUNT"); do echo "$i" >"$WORK/tiny/t$i.txt"; done
printf 'import sys\n' >"$WORK/noop.py"
echo "bench: corpus of $FILES files, $(du -sh "$CORPUS" | cut -f1); $COUNT tiny files; $RUNS runs each" >&2

# Built (and compiled) once before the clock starts: a user's second run, as for any function.
"$FANOUT" run --input "$WORK/tiny" --python "$WORK/noop.py" --output "$WORK/warm1" --quiet
"$FANOUT" run --input "$CORPUS" --python "$SCRIPT" --output "$WORK/warm2" --quiet -- --top 10

cat >"$WORK/lithops_wordfreq.py" <<PY
import os, runpy, sys
import lithops
corpus, out = sys.argv[1], sys.argv[2]
def count(path):
    sys.argv = ["wordfreq.py", "--top", "10", path, out]
    try:
        runpy.run_path("$SCRIPT", run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0
executor = lithops.FunctionExecutor(config_file="$WORK/lithops.yaml")
paths = sorted(os.path.join(corpus, f) for f in os.listdir(corpus))
codes = executor.get_result(executor.map(count, paths))
assert all(code in (0, None) for code in codes), codes
PY

for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK"/out-* && mkdir -p "$WORK/out-parallel" "$WORK/out-lithops"
	timed "noop fanout" "$FANOUT" run --input "$WORK/tiny" --python "$WORK/noop.py" --output "$WORK/out-fanout-noop" --quiet
	timed "noop parallel" sh -c "ls '$WORK/tiny' | parallel -j2 '$PYTHON' '$WORK/noop.py' '$WORK/tiny/{}'"
	timed "wordfreq fanout" "$FANOUT" run --input "$CORPUS" --python "$SCRIPT" --output "$WORK/out-fanout" --quiet -- --top 10
	timed "wordfreq parallel" sh -c "ls '$CORPUS' | parallel -j2 '$PYTHON' '$SCRIPT' --top 10 '$CORPUS/{}' '$WORK/out-parallel'"
	# Lithops' localhost runner starts `python` from PATH: the venv's.
	timed "wordfreq lithops" env "PATH=$VENV/bin:$PATH" "$VENV/bin/python" "$WORK/lithops_wordfreq.py" "$CORPUS" "$WORK/out-lithops"
done
report
python3 - "$WORK" "$COUNT" <<PY
import os, sys
work, count = sys.argv[1], int(sys.argv[2])
names = sorted(os.listdir(f"{work}/out-parallel"))
def same(peer):
    return sum(open(f"{work}/out-fanout/{n}", "rb").read() == open(f"{work}/{peer}/{n}", "rb").read() for n in names)
noop_fanout, noop_parallel = $(median_of 'noop fanout'), $(median_of 'noop parallel')
fanout, parallel, lithops = $(median_of 'wordfreq fanout'), $(median_of 'wordfreq parallel'), $(median_of 'wordfreq lithops')
print(f"no-op shard: fanout {noop_fanout / count * 1000:.1f} ms a shard of wall, parallel+CPython {noop_parallel / count * 1000:.1f} ms")
print(f"wordfreq: fanout {fanout:.2f} s, parallel -j2 CPython {parallel:.2f} s ({fanout / parallel:.2f}x), "
      f"Lithops localhost {lithops:.2f} s ({fanout / lithops:.2f}x)")
print(f"outputs byte-identical to host CPython's: {same('out-parallel')}/{len(names)}; to Lithops': {same('out-lithops')}/{len(names)}")
PY
