#!/usr/bin/env bash
# A 4-step image pipeline over 200 photos: fanout with examples/image against ImageMagick's
# `convert` with the same steps under `parallel -j2`, on the same files in the same run
# (issue 11's target: faster than ImageMagick). Steps: turn upright by EXIF, longest side
# 1024, unsharp mask sigma 1, JPEG quality 85.
# The photos are real ones (see make_photos in lib.sh).
source "$(dirname "$0")/lib.sh"
need parallel
CONVERT=/usr/bin/convert
[[ -x $CONVERT ]] || { echo "bench: ImageMagick is needed (Debian package imagemagick)" >&2; exit 1; }
COUNT=${COUNT:-200}
build_fanout
WASM=$(wasm_of "$ROOT/examples/image")
make_photos "$WORK/photos" "$COUNT"
echo "bench: $(ls "$WORK/photos" | wc -l) photos ($(du -sh "$WORK/photos" | cut -f1)); $RUNS runs each" >&2
for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK/out" "$WORK/magick" && mkdir -p "$WORK/magick"
	timed "fanout image" "$FANOUT" run --input "$WORK/photos" --function "$WASM" --output "$WORK/out" --quiet -- \
		--auto-orient --resize 1024 --sharpen 1.0 --format jpeg --quality 85
	timed "convert -j2" sh -c "cd '$WORK/photos' && ls | parallel -j2 $CONVERT {} -auto-orient -resize '1024x1024\>' -unsharp 0x1.0 -quality 85 '$WORK/magick/{}'"
done
report
python3 - "$WORK/out" "$WORK/magick" <<PY
import os, sys
from PIL import Image
sizes_equal = sum(Image.open(os.path.join(sys.argv[1], f)).size == Image.open(os.path.join(sys.argv[2], f)).size
                  for f in os.listdir(sys.argv[2]))
print(f"fanout {$(median_of 'convert')/$(median_of 'fanout image'):.2f}x faster than parallel -j2 convert (target > 1); "
      f"{sizes_equal}/{len(os.listdir(sys.argv[2]))} outputs the same size as convert's")
PY
