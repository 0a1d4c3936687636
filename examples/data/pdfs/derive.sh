#!/usr/bin/env bash
# Makes the harder cases of the PDF samples from the real files beside this script, with
# qpdf, Ghostscript and ImageMagick: object and xref streams, linearized, RC4 and AES
# encryption with an empty user password, a password-protected file, a damaged xref table,
# a truncated file, a file that is not a PDF, and an image-only scan.
set -euo pipefail
cd "$(dirname "$0")"
qpdf --object-streams=generate --force-version=1.5 neatoguide.pdf neatoguide-objstm.pdf
qpdf --linearize dot.1.pdf dot.1-linearized.pdf
qpdf --allow-weak-crypto --encrypt "" owner 40 -- pack.3.pdf pack.3-rc4.pdf
qpdf --encrypt "" owner 128 --use-aes=y -- refcard-en.pdf refcard-en-aes128.pdf
qpdf --encrypt "" owner 256 -- refcard-ru.pdf refcard-ru-aes256.pdf
qpdf --encrypt secret owner 256 -- pack.3.pdf ../bad-pdfs/needs-password.pdf
# startxref points into the middle of the xref table: readers must rebuild it.
python3 - <<'PY'
data = open("dot.1.pdf", "rb").read()
at = data.rindex(b"startxref")
offset = int(data[at + 9:].split()[0])
broken = data[:at] + b"startxref\n%d\n%%%%EOF\n" % (offset + 97)
open("dot.1-damaged-xref.pdf", "wb").write(broken)
PY
head -c 60000 R-data.pdf > ../bad-pdfs/truncated.pdf
printf '<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body><h1>Not Found</h1></body></html>\n' > ../bad-pdfs/not-a-pdf.pdf
# A scanned page: page 1 of a man page as a grey 150 dpi JPEG in a PDF, no text layer.
gs -q -dNOPAUSE -dBATCH -sDEVICE=pnggray -r150 -dFirstPage=1 -dLastPage=1 -sOutputFile=/tmp/scan-page.png pack.3.pdf
convert /tmp/scan-page.png -quality 75 /tmp/scan-page.jpg
gs -q -dNOPAUSE -dBATCH -sDEVICE=pdfwrite -dDEVICEWIDTHPOINTS=612 -dDEVICEHEIGHTPOINTS=792 -dFIXEDMEDIA \
	-sOutputFile=scan-pack.3.pdf -c "<< /PageSize [612 792] >> setpagedevice 0.48 0.48 scale" \
	-f "$(ls /usr/share/ghostscript/*/lib/viewjpeg.ps | head -1)" \
	-c "(/tmp/scan-page.jpg) viewJPEG"
rm -f /tmp/scan-page.png /tmp/scan-page.jpg
