# Shared helpers for the benchmark scripts (sourced, not run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fanout-target}
FANOUT=$CARGO_TARGET_DIR/release/fanout
RUNS=${RUNS:-5}
if [[ -n ${BENCH_DIR:-} ]]; then
	WORK=$BENCH_DIR
else
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/fanout-bench.XXXXXX")
	cleanups=("rm -rf '$WORK'")
fi
# Scripts add their own clean-up steps to `cleanups`; all run on exit, the last added first.
cleanups=(${cleanups[@]+"${cleanups[@]}"})
run_cleanups() {
	local i
	for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
}
trap run_cleanups EXIT

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: $1 is needed (Debian package ${2:-$1})" >&2; exit 1; }; }

build_fanout() {
	(cd "$ROOT" && cargo build --release --locked --quiet)
}

# wasm_of CRATE_DIR: builds the crate for wasm32-wasip1, prints the .wasm path
wasm_of() {
	local name
	name=$(basename "$1")
	(cd "$1" && cargo build --release --quiet --target wasm32-wasip1)
	echo "$CARGO_TARGET_DIR/wasm32-wasip1/release/$name.wasm"
}

# native_of CRATE_DIR: builds the crate for this machine, prints the binary path
native_of() {
	local name host
	name=$(basename "$1")
	host=$(rustc -vV | sed -n 's/^host: //p')
	(cd "$1" && cargo build --release --quiet --target "$host")
	echo "$CARGO_TARGET_DIR/$host/release/$name"
}

# timed LABEL CMD...: runs CMD, appends "LABEL wall user sys maxrss_kb" to $WORK/times
timed() {
	local label=$1
	shift
	/usr/bin/time -f "$label|%e|%U|%S|%M" -o "$WORK/time.one" "$@" >/dev/null 2>"$WORK/stderr.one" ||
		{ echo "bench: $label failed:" >&2; tail -20 "$WORK/stderr.one" >&2; exit 1; }
	cat "$WORK/time.one" >>"$WORK/times"
}

# report: medians per label from $WORK/times
report() {
	python3 - "$WORK/times" "$@" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, wall, user, sys_, rss = line.strip().split("|")
    rows.setdefault(label, []).append((float(wall), float(user), float(sys_), int(rss)))
print(f"{'run':<24}{'n':>3}{'median wall s':>15}{'min':>8}{'max':>8}{'cpu busy':>10}{'max RSS MB':>12}")
for label, runs in rows.items():
    walls = [r[0] for r in runs]
    med = statistics.median(walls)
    busy = statistics.median([(r[1] + r[2]) / r[0] / 2 for r in runs if r[0] > 0])
    rss = max(r[3] for r in runs) / 1024
    print(f"{label:<24}{len(runs):>3}{med:>15.3f}{min(walls):>8.3f}{max(walls):>8.3f}{busy:>9.0%}{rss:>12.1f}")
PY
}

median_of() { # LABEL -> median wall
	python3 -c "
import statistics,sys
w=[float(l.split('|')[1]) for l in open('$WORK/times') if l.split('|')[0].startswith('$1')]
print(statistics.median(w))"
}

# lithops_setup WORK: a venv with Lithops and Dask under ~/.cache (made once), and a Lithops
# config in WORK for the localhost backend with 2 worker processes. Sets LITHOPS_VENV.
lithops_setup() {
	LITHOPS_VENV=${FANOUT_BENCH_LITHOPS_VENV:-$HOME/.cache/fanout-bench-lithops}
	if [[ ! -x $LITHOPS_VENV/bin/python ]] || ! "$LITHOPS_VENV/bin/python" -c 'import lithops, dask.bag' 2>/dev/null; then
		python3 -m venv "$LITHOPS_VENV"
		"$LITHOPS_VENV/bin/pip" install --quiet --disable-pip-version-check lithops 'dask[bag]'
	fi
	cat >"$1/lithops.yaml" <<YAML
lithops:
    backend: localhost
    storage: localhost
    log_level: WARNING
localhost:
    version: 1
    worker_processes: 2
YAML
}
