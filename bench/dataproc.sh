#!/usr/bin/env bash
# The data-processing jobs (issue 25) against the tools they wrap, side by side in one run:
#  1. OCR: jobs/ocr.toml over PAGES (default 24) scan-like pages (tests/fixtures/ocr's pages,
#     rendered again and again) against `parallel -j2 tesseract` with the same settings
#     (--psm 3, OMP_THREAD_LIMIT=1); the texts are checked equal.
#  2. Video: jobs/transcode.toml over CLIPS (default 8) clips of CLIP_SECONDS (default 10) s of
#     1080p (ffmpeg's testsrc2 + a tone) against `parallel -j2` of the same two ffmpeg
#     commands (720-line H.264 CRF 23 veryfast + AAC, then the poster); target: at most 5%
#     slower.
# RUNS (default 5) runs of each, medians.
source "$(dirname "$0")/lib.sh"
need parallel
need bwrap bubblewrap
need tesseract tesseract-ocr
need ffmpeg
PAGES=${PAGES:-24}
CLIPS=${CLIPS:-8}
SECONDS_EACH=${CLIP_SECONDS:-10}
build_fanout

SCANS=$WORK/scans
python3 "$ROOT/tests/fixtures/ocr/render_pages.py" "$WORK/pages" "$WORK/truth" >&2
mkdir -p "$SCANS"
for i in $(seq 1 "$PAGES"); do
	for page in "$WORK"/pages/*.png "$WORK"/pages/*.jpg "$WORK"/pages/*.tiff; do
		cp "$page" "$SCANS/$i-$(basename "$page")"
	done
done
ls "$SCANS" | head -n "$PAGES" >"$WORK/keep" && (cd "$SCANS" && ls | grep -vxFf "$WORK/keep" | xargs -r rm)

VIDEOS=$WORK/videos
mkdir -p "$VIDEOS"
for i in $(seq 1 "$CLIPS"); do
	ffmpeg -nostdin -v error -y -f lavfi -i "testsrc2=size=1920x1080:rate=30" -f lavfi -i "sine=frequency=$((300 + i * 20)):sample_rate=48000" \
		-t "$SECONDS_EACH" -c:v libx264 -preset ultrafast -crf 18 -c:a aac -shortest "$VIDEOS/clip$i.mp4"
done
echo "bench: $(ls "$SCANS" | wc -l) pages, $(ls "$VIDEOS" | wc -l) clips of ${SECONDS_EACH}s 1080p; $RUNS runs each" >&2

transcode_one() { # IN OUT_DIR: what jobs/fn/transcode.sh runs, without fanout
	local in=$1 out=$2 stem
	stem=$(basename "${1%.*}")
	ffmpeg -nostdin -v error -i "$in" -map 0:v:0 -map '0:a:0?' -vf "scale=-2:'min(720,trunc(ih/2)*2)'" \
		-c:v libx264 -crf 23 -preset veryfast -pix_fmt yuv420p -movflags +faststart -c:a aac -b:a 128k "$out/$stem.mp4"
	ffmpeg -nostdin -v error -ss "$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$in" | awk '{printf "%.3f", $1 / 10}')" \
		-i "$in" -frames:v 1 -vf "scale=-2:'min(720,trunc(ih/2)*2)'" -q:v 3 "$out/$stem.jpg"
}
export -f transcode_one

cd "$ROOT"
for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK/ocr-fanout" "$WORK/ocr-parallel" && mkdir -p "$WORK/ocr-parallel"
	timed "ocr fanout" "$FANOUT" run jobs/ocr.toml --input "$SCANS" --output "$WORK/ocr-fanout" --quiet
	timed "ocr parallel" sh -c "cd '$SCANS' && ls | OMP_THREAD_LIMIT=1 parallel -j2 tesseract {} '$WORK/ocr-parallel/{.}' --psm 3 2>/dev/null"
	rm -rf "$WORK/video-fanout" "$WORK/video-parallel" && mkdir -p "$WORK/video-parallel"
	timed "video fanout" "$FANOUT" run jobs/transcode.toml --input "$VIDEOS" --output "$WORK/video-fanout" --quiet
	timed "video parallel" bash -c "ls '$VIDEOS'/*.mp4 | parallel -j2 transcode_one {} '$WORK/video-parallel'"
done
report
same=0
for text in "$WORK"/ocr-parallel/*.txt; do
	cmp -s "$text" "$WORK/ocr-fanout/$(basename "$text")" && same=$((same + 1))
done
python3 - <<PY
ocr_f, ocr_p = $(median_of 'ocr fanout'), $(median_of 'ocr parallel')
video_f, video_p = $(median_of 'video fanout'), $(median_of 'video parallel')
print(f"OCR: fanout {ocr_f:.2f} s vs parallel -j2 tesseract {ocr_p:.2f} s ({ocr_f / ocr_p - 1:+.1%}); "
      f"$same/$(ls "$WORK"/ocr-parallel/*.txt | wc -l) texts identical")
print(f"video: fanout {video_f:.2f} s vs parallel -j2 ffmpeg {video_p:.2f} s ({video_f / video_p - 1:+.1%}, target <= +5%)")
PY
