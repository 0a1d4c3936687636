#!/usr/bin/env bash
# Word frequencies over a 200-file text corpus, map + reduce, in one run:
#  - fanout: jobs/wordfreq.toml (the wordfreq function counts 2 files a shard, its
#    `--merge` sums the tables into one frequencies.csv);
#  - Dask: a bag of the files, a Counter a file, folded into one, with the processes
#    scheduler and 2 workers (threads would hold the GIL);
#  - GNU parallel -j2 running awk on each file, then one awk summing the tables;
#  - Lithops' map_reduce on its localhost backend (version 1, 2 workers).
# Every one writes the whole table sorted by count, then word; each table is checked
# against a Python Counter over the corpus before its time counts.
# The corpus: 200 files of FILE_KB (default 400) KiB cut at line ends from the Debian
# changelogs under /usr/share/doc, with \r, \v and \f made spaces so that awk's fields
# (in the C locale) and Python's bytes.split() are the same words.
# RUNS (default 5) runs of each, medians. Dask and Lithops go into a venv under ~/.cache.
source "$(dirname "$0")/lib.sh"
need parallel
FILES=${FILES:-200}
FILE_KB=${FILE_KB:-400}
build_fanout
lithops_setup "$WORK"
VENV=$LITHOPS_VENV

CORPUS=$WORK/corpus
make_corpus "$CORPUS" "$FILES" "$FILE_KB"
echo "bench: corpus of $FILES files, $(du -sh "$CORPUS" | cut -f1)" >&2

# Each peer's table is "word count" lines; fanout's is CSV. Both are checked here.
check_table() { # TABLE: a peer's table against Python's Counter
	python3 - "$CORPUS" "$1" <<'PY'
import collections, os, sys
corpus, table = sys.argv[1], sys.argv[2]
want = collections.Counter()
for name in os.listdir(corpus):
    want.update(open(os.path.join(corpus, name), "rb").read().split())
want = sorted(want.items(), key=lambda item: (-item[1], item[0]))
got = [tuple(line.rsplit(b" ", 1)) for line in open(table, "rb").read().splitlines()]
got = [(word, int(count)) for word, count in got]
if got != want:
    diff = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    sys.exit(f"{table} differs from Python's Counter at row {diff + 1} ({len(got)} rows, {len(want)} wanted)")
PY
}

cat >"$WORK/dask_wordfreq.py" <<'PY'
import collections, os, sys
import dask.bag as db
corpus, out = sys.argv[1], sys.argv[2]
paths = sorted(os.path.join(corpus, name) for name in os.listdir(corpus))
def count(path):
    with open(path, "rb") as f:
        return collections.Counter(f.read().split())
def merge(a, b):
    a.update(b)
    return a
if __name__ == "__main__":
    total = db.from_sequence(paths, npartitions=len(paths) // 2).map(count).fold(
        merge, merge, initial=collections.Counter()).compute(scheduler="processes", num_workers=2)
    with open(out, "wb") as f:
        for word, n in sorted(total.items(), key=lambda item: (-item[1], item[0])):
            f.write(word + b" " + str(n).encode() + b"\n")
PY

cat >"$WORK/lithops_wordfreq.py" <<'PY'
import collections, os, sys
import lithops
corpus, out = sys.argv[1], sys.argv[2]
paths = sorted(os.path.join(corpus, name) for name in os.listdir(corpus))
def count(path):
    with open(path, "rb") as f:
        return collections.Counter(f.read().split())
def merge(results):
    total = collections.Counter()
    for counter in results:
        total.update(counter)
    return total
fexec = lithops.FunctionExecutor()
fexec.map_reduce(count, paths, merge)
total = fexec.get_result()
with open(out, "wb") as f:
    for word, n in sorted(total.items(), key=lambda item: (-item[1], item[0])):
        f.write(word + b" " + str(n).encode() + b"\n")
fexec.clean()
PY

# The parallel peer: awk counts a file (C locale: fields split at space, tab and newline),
# one awk sums the tables, sort orders them by count, then word in byte order.
cat >"$WORK/parallel_wordfreq.sh" <<'SH'
set -euo pipefail
corpus=$1 out=$2 parts=$(mktemp -d)
export LC_ALL=C
find "$corpus" -name '*.txt' | parallel -j2 "awk '{for (i = 1; i <= NF; i++) c[\$i]++} END {for (w in c) print w, c[w]}' {} > $parts/{#}"
cat "$parts"/* | awk '{c[$1] += $2} END {for (w in c) print w, c[w]}' | sort -k2,2nr -k1,1 >"$out"
rm -rf "$parts"
SH

# Each peer as one command, for `timed`.
FANOUT_CMD=(env -C "$ROOT" "$FANOUT" run jobs/wordfreq.toml --input "$CORPUS/" -q --output)
DASK_CMD=("$VENV/bin/python" "$WORK/dask_wordfreq.py" "$CORPUS")
PARALLEL_CMD=(bash "$WORK/parallel_wordfreq.sh" "$CORPUS")
# Lithops' localhost runner starts `python` from PATH: the venv's.
LITHOPS_CMD=(env "PATH=$VENV/bin:$PATH" "LITHOPS_CONFIG_FILE=$WORK/lithops.yaml"
	"$VENV/bin/python" "$WORK/lithops_wordfreq.py" "$CORPUS")

echo "bench: a first run of each, checked against Python's Counter (not timed)" >&2
"${FANOUT_CMD[@]}" "$WORK/check-fanout/" >/dev/null
python3 "$ROOT/scripts/check-words" freq "$CORPUS" "$WORK/check-fanout/frequencies.csv" >&2
for peer in DASK PARALLEL LITHOPS; do
	command=${peer}_CMD[@]
	"${!command}" "$WORK/check-$peer.txt" >"$WORK/check.log" 2>&1 ||
		{ echo "bench: $peer failed:" >&2; tail -20 "$WORK/check.log" >&2; exit 1; }
	check_table "$WORK/check-$peer.txt"
	echo "bench: $peer agrees" >&2
done
rm -rf "$WORK"/check-*

for run in $(seq 1 "$RUNS"); do
	echo "bench: round $run of $RUNS" >&2
	timed fanout "${FANOUT_CMD[@]}" "$WORK/out-fanout-$run/"
	timed dask "${DASK_CMD[@]}" "$WORK/out-dask-$run.txt"
	timed parallel+awk "${PARALLEL_CMD[@]}" "$WORK/out-parallel-$run.txt"
	timed lithops "${LITHOPS_CMD[@]}" "$WORK/out-lithops-$run.txt"
	rm -rf "$WORK"/out-*
done
report
fanout=$(median_of fanout)
for peer in dask parallel+awk lithops; do
	python3 -c "print(f'$peer / fanout: {$(median_of "$peer") / $fanout:.2f}x')"
done
