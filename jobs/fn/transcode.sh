#!/bin/sh
# Web-ready video with ffmpeg, run by jobs/transcode.toml inside fanout's sandbox:
#   sh /files/transcode.sh IN OUT STEM [--height N] [--webm | --audio-only]
# Default: OUT/STEM.mp4, H.264 (CRF 23, preset veryfast: throughput first) + AAC 128k,
# +faststart, at most 720 lines (aspect kept, never upscaled), frame rate kept, and a poster
# frame at 10% of the duration, OUT/STEM.jpg. A clip without sound gives a video-only file.
# --height 1080|480|N: another height limit. --webm: VP9 + Opus in OUT/STEM.webm.
# --audio-only: the sound alone, AAC in OUT/STEM.m4a (no poster).
set -eu
in=$1 out=$2 stem=$3
shift 3
height=720 kind=mp4
while [ $# -gt 0 ]; do
	case $1 in
	--height) [ $# -ge 2 ] || { echo "transcode: --height wants a number of lines" >&2; exit 2; }; height=$2; shift 2 ;;
	--webm) kind=webm; shift ;;
	--audio-only) kind=audio; shift ;;
	*) echo "transcode: unknown argument $1 (expected --height N, --webm or --audio-only)" >&2; exit 2 ;;
	esac
done
case $height in '' | *[!0-9]*) echo "transcode: --height wants a number of lines, not $height" >&2; exit 2 ;; esac
for tool in ffmpeg ffprobe; do
	command -v $tool >/dev/null || { echo "transcode: $tool is not installed on this machine (Debian: ffmpeg)" >&2; exit 127; }
done

# One probe: the streams' kinds, and the duration the poster is taken at a tenth of.
probe=$(ffprobe -v error -show_entries stream=codec_type:format=duration -of default=nw=1 "$in" 2>/tmp/probe) || {
	echo "transcode: $in is not a video ffprobe can read: $(head -c 300 /tmp/probe)" >&2
	exit 1
}
case $probe in *codec_type=audio*) audio=yes ;; *) audio=no ;; esac
case $probe in *codec_type=video*) video=yes ;; *) video=no ;; esac
if [ $kind = audio ]; then
	[ $audio = yes ] || { echo "transcode: $in has no sound to extract" >&2; exit 1; }
	exec ffmpeg -nostdin -v error -i "$in" -map 0:a:0 -vn -c:a aac -b:a 128k -movflags +faststart "$out/$stem.m4a"
fi
[ $video = yes ] || { echo "transcode: $in has no picture (give --audio-only for its sound)" >&2; exit 1; }

# Never upscaled; both sides even, as 4:2:0 chroma needs.
scale="scale=-2:'min($height,trunc(ih/2)*2)'"
if [ $kind = webm ]; then
	target="$out/$stem.webm"
	set -- -c:v libvpx-vp9 -crf 32 -b:v 0 -deadline good -cpu-used 4 -row-mt 1 -pix_fmt yuv420p
	[ $audio = no ] || set -- "$@" -c:a libopus -b:a 96k
else
	target="$out/$stem.mp4"
	set -- -c:v libx264 -crf 23 -preset veryfast -pix_fmt yuv420p -movflags +faststart
	[ $audio = no ] || set -- "$@" -c:a aac -b:a 128k
fi
ffmpeg -nostdin -v error -i "$in" -map 0:v:0 -map '0:a:0?' -vf "$scale" "$@" "$target"

# The poster: the frame at a tenth of the duration (the first, when it is unknown).
at=$(printf '%s\n' "$probe" | awk -F= '$1 == "duration" && $2 + 0 > 0 { printf "%.3f", $2 / 10; found = 1 } END { if (!found) print 0 }')
exec ffmpeg -nostdin -v error -ss "$at" -i "$in" -frames:v 1 -vf "$scale" -q:v 3 "$out/$stem.jpg"
