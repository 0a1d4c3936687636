#!/usr/bin/env bash
# The PDF function against poppler on the same files in the same run (issue 11's targets):
#   text of 180 PDFs        fanout vs `parallel -j2 pdftotext`            target: faster
#   page 1 at 72 dpi        fanout vs `parallel -j2 pdftoppm -f 1 -l 1`   target: >= 2x faster
#   all pages of 185 pages  fanout vs `pdftoppm` on the one file           target: faster
# The PDFs are real documentation from Debian packages (downloaded once, cached under
# ~/.cache/fanout-bench-pdfs), not the repository's samples; then their agreement with
# poppler is measured as the tests measure it (scripts/pdf-agreement), over the whole set.
source "$(dirname "$0")/lib.sh"
need parallel
need pdftotext poppler-utils
need qpdf
COUNT=${COUNT:-180}
CORPUS=${PDF_CORPUS:-$HOME/.cache/fanout-bench-pdfs}
PACKAGES=(graphviz-doc debian-refcard texlive-fonts-recommended-doc ghostscript-doc gnuplot-doc
	r-doc-pdf octave-doc maxima-doc texlive-latex-recommended-doc)
if [[ ! -f $CORPUS/.complete ]]; then
	echo "bench: downloading ${PACKAGES[*]} into $CORPUS (once)" >&2
	rm -rf "$CORPUS" && mkdir -p "$CORPUS/debs" "$CORPUS/all"
	(cd "$CORPUS/debs" && apt-get download "${PACKAGES[@]}" >/dev/null 2>&1) ||
		{ echo "bench: apt-get download failed" >&2; exit 1; }
	for deb in "$CORPUS"/debs/*.deb; do
		pkg=$(basename "$deb" | cut -d_ -f1)
		mkdir -p "$CORPUS/x/$pkg" && dpkg-deb -x "$deb" "$CORPUS/x/$pkg"
	done
	# Symbolic links to compressed manuals point at files already here: only real files.
	find "$CORPUS/x" -name '*.pdf.gz' -type f -exec gunzip -f {} +
	find "$CORPUS/x" -name '*.pdf' -type f | while read -r pdf; do
		pkg=$(echo "$pdf" | sed "s|$CORPUS/x/||" | cut -d/ -f1)
		cp "$pdf" "$CORPUS/all/${pkg}__$(basename "$pdf")"
	done
	rm -rf "$CORPUS/debs" "$CORPUS/x"
	touch "$CORPUS/.complete"
fi
build_fanout
WASM=$(wasm_of "$ROOT/examples/pdf")

# The set: COUNT files poppler reads, of at most 400 pages each (the 1,000-2,400-page manuals
# are the separate single-file case), in name order.
mkdir -p "$WORK/pdfs"
for pdf in "$CORPUS"/all/*.pdf; do
	pages=$(pdfinfo "$pdf" 2>/dev/null | sed -n 's/^Pages: *//p')
	[[ -n $pages && $pages -le 400 ]] && cp "$pdf" "$WORK/pdfs/"
	[[ $(ls "$WORK/pdfs" | wc -l) -ge $COUNT ]] && break
done
count=$(ls "$WORK/pdfs" | wc -l)
pages=$(for f in "$WORK"/pdfs/*.pdf; do pdfinfo "$f" | sed -n 's/^Pages: *//p'; done | paste -sd+ | bc)
echo "bench: $count PDFs, $pages pages, $(du -sh "$WORK/pdfs" | cut -f1); $RUNS runs each" >&2
gnuplot=$(ls "$CORPUS"/all/*gnuplot.pdf | head -1)
mkdir -p "$WORK/one"
qpdf --empty --pages "$gnuplot" 1-185 -- "$WORK/one/manual-185.pdf"
echo "bench: one file of 185 pages ($(du -h "$WORK/one/manual-185.pdf" | cut -f1)) from $(basename "$gnuplot")" >&2

run_fanout() { # LABEL INPUT DEST ARGS...
	local label=$1 input=$2 dest=$3
	shift 3
	rm -rf "$dest"
	timed "$label" "$FANOUT" run --input "$input" --function "$WASM" --output "$dest" --quiet --timeout 300s -- "$@"
}
for run in $(seq 1 "$RUNS"); do
	run_fanout "fanout text" "$WORK/pdfs" "$WORK/text" text
	rm -rf "$WORK/poppler-text" && mkdir -p "$WORK/poppler-text"
	timed "pdftotext -j2" sh -c "cd '$WORK/pdfs' && ls | parallel -j2 pdftotext -enc UTF-8 {} '$WORK/poppler-text/{.}.txt'"
	run_fanout "fanout page 1" "$WORK/pdfs" "$WORK/preview" render --pages 1 --dpi 72
	rm -rf "$WORK/poppler-preview" && mkdir -p "$WORK/poppler-preview"
	timed "pdftoppm p1 -j2" sh -c "cd '$WORK/pdfs' && ls | parallel -j2 pdftoppm -png -r 72 -f 1 -l 1 {} '$WORK/poppler-preview/{.}'"
	run_fanout "fanout 185 pages" "$WORK/one" "$WORK/one-out" render --pages all --dpi 72
	rm -rf "$WORK/poppler-one" && mkdir -p "$WORK/poppler-one"
	timed "pdftoppm 185 pages" pdftoppm -png -r 72 "$WORK/one/manual-185.pdf" "$WORK/poppler-one/p"
done
report
python3 -c "
t=$(median_of 'pdftotext')/$(median_of 'fanout text'); p=$(median_of 'pdftoppm p1')/$(median_of 'fanout page 1')
o=$(median_of 'pdftoppm 185')/$(median_of 'fanout 185')
print(f'text: fanout {t:.2f}x faster than parallel -j2 pdftotext (target > 1)')
print(f'page 1: fanout {p:.2f}x faster than parallel -j2 pdftoppm (target >= 2)')
print(f'185 pages of one file: fanout {o:.2f}x faster than pdftoppm (target > 1)')"

echo "== agreement with poppler over the $count PDFs (scripts/pdf-agreement)" >&2
mkdir -p "$WORK/all"
cp "$WORK"/text/*.txt "$WORK"/preview/*.png "$WORK/all/"
"$ROOT/scripts/pdf-agreement" "$WORK/pdfs" "$WORK/all" --only text,render >"$WORK/agreement.jsonl"
python3 - "$WORK/agreement.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
files = [r for r in rows if "file" in r]
latin = [r["text"]["f1"] for r in files if r["text"]["script"] == "left-to-right"]
cjk = [r["text"]["f1"] for r in files if r["text"]["script"] == "unspaced"]
rtl = [r["text"]["f1"] for r in files if r["text"]["script"] == "right-to-left"]
renders = [p for r in files for p in r["render"]]
print(f"text: {sum(f >= 0.95 for f in latin)}/{len(latin)} Latin-script files at F1 >= 0.95 "
      f"(median {statistics.median(latin):.3f}, worst {min(latin):.3f}); "
      f"{sum(f >= 0.85 for f in cjk)}/{len(cjk)} CJK and Thai files at >= 0.85 (characters); "
      f"right-to-left files: {', '.join(f'{f:.3f}' for f in rtl) or 'none'}")
for r in sorted(files, key=lambda r: r["text"]["f1"])[:5]:
    print(f"  lowest: {r['file']} F1 {r['text']['f1']} ({r['text']['script']})")
rs = [p["r"] for p in renders]
off = max(max(abs(a - b) for a, b in zip(p["size"], p["poppler_size"])) for p in renders)
print(f"page 1: {sum(r >= 0.8 for r in rs)}/{len(rs)} at r >= 0.8 (median {statistics.median(rs):.3f}, worst {min(rs):.3f}); "
      f"sizes within {off} px of pdftoppm's")
PY
