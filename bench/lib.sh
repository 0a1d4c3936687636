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

# make_photos DIR COUNT: COUNT real photos in DIR. They come from Debian's mate-backgrounds
# (downloaded once, cached under ~/.cache/fanout-bench-photos): each is a different crop of
# one of them, 1.5 to 5 megapixels, a quarter stored sideways with EXIF orientation 6, as
# cameras do. The same seed gives the same photos to every script.
make_photos() {
	local source=$HOME/.cache/fanout-bench-photos
	python3 -c 'import PIL' 2>/dev/null || { echo "bench: python3 with Pillow is needed" >&2; exit 1; }
	if [[ ! -f $source/.complete ]]; then
		echo "bench: downloading mate-backgrounds into $source (once)" >&2
		rm -rf "$source" && mkdir -p "$source/deb"
		(cd "$source/deb" && apt-get download mate-backgrounds >/dev/null 2>&1) || { echo "bench: apt-get download failed" >&2; exit 1; }
		dpkg-deb -x "$source"/deb/*.deb "$source/x"
		find "$source/x" -path '*nature*' -name '*.jpg' -exec cp {} "$source/" \;
		rm -rf "$source/deb" "$source/x"
		touch "$source/.complete"
	fi
	mkdir -p "$1"
	python3 - "$source" "$1" "$2" <<'PY'
import os, random, sys
from PIL import Image
sources = sorted(f for f in os.listdir(sys.argv[1]) if f.endswith(".jpg"))
rng = random.Random(11)
for i in range(int(sys.argv[3])):
    photo = Image.open(os.path.join(sys.argv[1], sources[i % len(sources)])).convert("RGB")
    w, h = photo.size
    scale = rng.uniform(0.6, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = photo.crop((x, y, x + cw, y + ch))
    exif = Image.Exif()
    if i % 4 == 0:
        crop = crop.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    crop.save(os.path.join(sys.argv[2], f"photo{i:03}.jpg"), quality=90, exif=exif)
PY
}

# make_corpus DIR FILES KB: FILES text files of KB KiB in DIR, cut at line ends from the
# Debian changelogs under /usr/share/doc, with \r, \v and \f made spaces (so that awk's
# fields in the C locale and Python's bytes.split() are the same words).
make_corpus() {
	mkdir -p "$1"
	python3 - "$1" "$2" "$3" <<'PY'
import glob, gzip, sys
corpus, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) * 1024
def lines():
    for path in sorted(glob.glob("/usr/share/doc/*/changelog*.gz")):
        with gzip.open(path) as f:
            yield from f
source, clean = lines(), bytes.maketrans(b"\r\v\f", b"   ")
for i in range(files):
    chunk = bytearray()
    while len(chunk) < size:
        chunk += next(source).translate(clean)
    open(f"{corpus}/doc-{i:03}.txt", "wb").write(chunk)
PY
}
