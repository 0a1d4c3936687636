#!/bin/sh
# OCR of one scan with tesseract, run by jobs/ocr.toml inside fanout's sandbox:
#   sh /files/ocr.sh IN OUT STEM [tesseract options] [txt] [pdf] [hocr]
# An image is read as it is; a PDF of scanned pages is first rendered (pdftoppm, 300 dpi,
# grey) and its pages recognised in order into one output (pages apart by a form feed in the
# text, one page each in a searchable PDF or hOCR). With no output kind named: plain text.
set -eu
in=$1 out=$2 stem=$3
shift 3
# The output kinds named among the arguments, else plain text.
case " $* " in *" txt "* | *" pdf "* | *" hocr "*) ;; *) set -- "$@" txt ;; esac
shown=$in
command -v tesseract >/dev/null ||
	{ echo "ocr: tesseract is not installed on this machine (Debian: tesseract-ocr tesseract-ocr-eng)" >&2; exit 127; }
case "$in" in
*.pdf | *.PDF)
	command -v pdftoppm >/dev/null ||
		{ echo "ocr: $in is a PDF, and pdftoppm is not installed on this machine (Debian: poppler-utils)" >&2; exit 127; }
	pages=/tmp/pages
	mkdir -p "$pages"
	pdftoppm -r 300 -gray -png "$in" "$pages/page"
	# pdftoppm numbers pages with as many digits as the last one needs: sort them as numbers.
	ls "$pages"/page-*.png | sort -t- -k2 -n >/tmp/pages.txt
	[ -s /tmp/pages.txt ] || { echo "ocr: $in has no pages" >&2; exit 1; }
	in=/tmp/pages.txt
	;;
esac
# tesseract's own messages do not name the file: say which one it could not read.
tesseract "$in" "$out/$stem" "$@" || {
	status=$?
	echo "ocr: $shown: tesseract could not read it (exit $status)" >&2
	exit $status
}
