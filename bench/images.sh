#!/usr/bin/env bash
# A 4-step image pipeline over 200 photos: fanout with examples/image against ImageMagick's
# `convert` with the same steps under `parallel -j2`, on the same files in the same run
# (issue 11's target: faster than ImageMagick). Steps: turn upright by EXIF, longest side
# 1024, unsharp mask sigma 1, JPEG quality 85.
# The photos are real ones (Debian's mate-backgrounds, downloaded once and cached under
# ~/.cache/fanout-bench-photos): each of 200 inputs is a different crop of one of them,
# 1.5 to 5 megapixels, a quarter stored sideways with EXIF orientation 6, as cameras do.
source "$(dirname "$0")/lib.sh"
need parallel
CONVERT=/usr/bin/convert
[[ -x $CONVERT ]] || { echo "bench: ImageMagick is needed (Debian package imagemagick)" >&2; exit 1; }
python3 -c 'import PIL' 2>/dev/null || { echo "bench: python3 with Pillow is needed" >&2; exit 1; }
COUNT=${COUNT:-200}
SOURCE=$HOME/.cache/fanout-bench-photos
if [[ ! -f $SOURCE/.complete ]]; then
	echo "bench: downloading mate-backgrounds into $SOURCE (once)" >&2
	rm -rf "$SOURCE" && mkdir -p "$SOURCE/deb"
	(cd "$SOURCE/deb" && apt-get download mate-backgrounds >/dev/null 2>&1) || { echo "bench: apt-get download failed" >&2; exit 1; }
	dpkg-deb -x "$SOURCE"/deb/*.deb "$SOURCE/x"
	find "$SOURCE/x" -path '*nature*' -name '*.jpg' -exec cp {} "$SOURCE/" \;
	rm -rf "$SOURCE/deb" "$SOURCE/x"
	touch "$SOURCE/.complete"
fi
build_fanout
WASM=$(wasm_of "$ROOT/examples/image")
mkdir -p "$WORK/photos"
python3 - "$SOURCE" "$WORK/photos" "$COUNT" <<'PY'
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
