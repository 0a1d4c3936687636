#!/usr/bin/env bash
# Native commands under bubblewrap (issue 24's target: the sandbox costs at most 5%):
# ImageMagick's `convert` over 200 photos through `fanout run --command`, in bubblewrap and
# with `--sandbox none`, against the same `convert` under `parallel -j2`, in the same run.
# Same photos and steps as bench/images.sh: turn upright by EXIF, longest side 1024, unsharp
# mask sigma 1, JPEG quality 85.
source "$(dirname "$0")/lib.sh"
need parallel
need bwrap bubblewrap
CONVERT=/usr/bin/convert
[[ -x $CONVERT ]] || { echo "bench: ImageMagick is needed (Debian package imagemagick)" >&2; exit 1; }
COUNT=${COUNT:-200}
build_fanout
make_photos "$WORK/photos" "$COUNT"
STEPS=(-auto-orient -resize '1024x1024>' -unsharp 0x1.0 -quality 85)
COMMAND="$CONVERT {in} ${STEPS[*]} {out}/{name}"
echo "bench: $(ls "$WORK/photos" | wc -l) photos ($(du -sh "$WORK/photos" | cut -f1)); $RUNS runs each" >&2
for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK/boxed" "$WORK/bare" "$WORK/magick" && mkdir -p "$WORK/magick"
	timed "fanout bubblewrap" "$FANOUT" run --input "$WORK/photos" --command "$COMMAND" --output "$WORK/boxed" --quiet
	timed "fanout sandbox none" "$FANOUT" run --input "$WORK/photos" --command "$COMMAND" --sandbox none --output "$WORK/bare" --quiet
	timed "convert -j2" sh -c "cd '$WORK/photos' && ls | parallel -j2 $CONVERT {} -auto-orient -resize '1024x1024\>' -unsharp 0x1.0 -quality 85 '$WORK/magick/{}'"
done
report
python3 - "$WORK/boxed" "$WORK/magick" <<PY
import os, sys
same = sum(open(os.path.join(sys.argv[1], f), "rb").read() == open(os.path.join(sys.argv[2], f), "rb").read()
           for f in os.listdir(sys.argv[2]))
parallel, boxed, bare = $(median_of 'convert'), $(median_of 'fanout bubblewrap'), $(median_of 'fanout sandbox none')
print(f"bubblewrap: {boxed / parallel - 1:+.1%} against parallel -j2 convert (target <= +5%), "
      f"{boxed / bare - 1:+.1%} against fanout without a sandbox; "
      f"{same}/{len(os.listdir(sys.argv[2]))} outputs byte-identical to convert's own")
PY
