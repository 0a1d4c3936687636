#!/usr/bin/env bash
# Record validation (jobs/validate.toml's function, examples/validate) against the validators
# a user would otherwise run, side by side in one run over RECORDS (default 200,000) generated
# orders (JSONL, nested, ~5% faults) and flights (CSV):
#  - fanout run jobs/validate.toml (2 workers, shards of 10,000 rows, with its reduce);
#  - ajv 8 (Node), one process, JSON.parse + validate of every line (bench/validate/bench.js);
#  - ajv under `parallel -j2` over the file cut in two halves (both cores, as fanout uses);
#  - Python jsonschema 4.26, one process, on a 40,000-record slice (it is ~60x slower).
# Whole processes are timed (start, reading, parsing, validating, writing). RUNS (default 5).
source "$(dirname "$0")/lib.sh"
need node nodejs
need parallel
python3 -c 'import jsonschema' 2>/dev/null || { echo "bench: python3 with jsonschema is needed" >&2; exit 1; }
RECORDS=${RECORDS:-200000}
build_fanout
(cd "$ROOT/bench/validate" && [[ -d node_modules/ajv ]] || npm ci --silent --no-audit --no-fund)
(cd "$ROOT/examples/validate" && env -u CARGO_BUILD_TARGET cargo build --release --locked --quiet --target wasm32-wasip1)

DATA=$WORK/data
python3 "$ROOT/tests/fixtures/validate/gen.py" "$DATA" "$RECORDS" "$RECORDS" >&2
head -n 40000 "$DATA/orders.jsonl" >"$DATA/orders40k.jsonl"
half=$(((RECORDS + 1) / 2))
split -l "$half" -d "$DATA/orders.jsonl" "$DATA/half-"
echo "bench: $RECORDS orders (JSONL, $(du -h "$DATA/orders.jsonl" | cut -f1)) and flights (CSV); $RUNS runs each" >&2

cd "$ROOT"
for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK/jsonl" "$WORK/csv"
	timed "jsonl fanout" "$FANOUT" run jobs/validate.toml --input "$DATA/orders.jsonl" \
		--file "schema.json=$DATA/orders.schema.json" --output "$WORK/jsonl" --quiet
	timed "jsonl ajv one" node bench/validate/bench.js "$DATA/orders.jsonl" "$DATA/orders.schema.json"
	timed "jsonl ajv -j2" sh -c "ls '$DATA'/half-* | parallel -j2 node bench/validate/bench.js {} '$DATA/orders.schema.json'"
	timed "jsonl python 40k" python3 bench/validate/bench_py.py "$DATA/orders40k.jsonl" "$DATA/orders.schema.json"
	timed "csv fanout" "$FANOUT" run jobs/validate.toml --input "$DATA/flights.csv" \
		--file "schema.json=$DATA/flights.schema.json" --output "$WORK/csv" --quiet
done
report
python3 - <<PY
n = $RECORDS
f, a, ap, py = $(median_of 'jsonl fanout'), $(median_of 'jsonl ajv one'), $(median_of 'jsonl ajv -j2'), $(median_of 'jsonl python 40k')
csv = $(median_of 'csv fanout')
print(f"JSONL: fanout {f:.2f} s ({n / f:,.0f} records/s); ajv one process {a:.2f} s (fanout {a / f:.2f}x as fast), "
      f"ajv parallel -j2 {ap:.2f} s (fanout {ap / f:.2f}x as fast); Python jsonschema {40000 / py:,.0f} records/s "
      f"(fanout {n / f / (40000 / py):.0f}x as fast)")
print(f"CSV: fanout {csv:.2f} s ({n / csv:,.0f} records/s)")
PY
