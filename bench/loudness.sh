#!/usr/bin/env bash
# Loudness normalization (jobs/loudness.toml's function, examples/audio) against ffmpeg's
# two-pass `loudnorm` under `parallel -j2`, side by side in one run: eleven files (speech,
# music, a float WAV, a 24-bit FLAC, a tone, MP3, Vorbis, two that need the limiter, silence,
# a clip too short to gate, random bytes), every output measured by ffmpeg's own meter
# (ebur128=peak=true): within 0.5 LU of the target on plain gain, 1.0 LU with the limiter,
# true peak at most the ceiling, length, channels, rate and format kept. Then RUNS (default 3)
# timed runs of the whole set each way, and a 4-minute file for memory and speed.
# Needs ffmpeg, sox, espeak-ng, parallel and python3.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fanout-target}
for tool in ffmpeg sox espeak-ng parallel; do
	command -v $tool >/dev/null || { echo "bench: $tool is needed" >&2; exit 1; }
done
(cd "$ROOT" && cargo build --release --locked --quiet) || exit 1
(cd "$ROOT/examples/audio" && env -u CARGO_BUILD_TARGET cargo build --release --locked --quiet --target wasm32-wasip1) || exit 1
WASM=$CARGO_TARGET_DIR/wasm32-wasip1/release/audio.wasm
FANOUT=$CARGO_TARGET_DIR/release/fanout
W=${WORK:-/tmp/fanout-bench-loudness}
TARGET=-16
TP=-1
RUNS=${RUNS:-3}

rm -rf "$W"; mkdir -p "$W/in" "$W/gen" "$W/mem"
IN=$W/in G=$W/gen

# ffmpeg's integrated loudness (I) and true peak of a file: "I TP".
meter() {
  ffmpeg -nostats -hide_banner -i "$1" -af ebur128=peak=true -f null - 2>&1 |
    awk '/Summary:/{s=1} s&&/ I:/{i=$2} s&&/Peak:/{p=$2} END{print i, p}'
}
# Rescale $1 (any format) to $3 LUFS into $2 with extra ffmpeg output args.
to_lufs() {
  local src=$1 dst=$2 want=$3; shift 3
  local i; i=$(meter "$src" | cut -d' ' -f1)
  ffmpeg -loglevel error -y -i "$src" -af "volume=$(python3 -c "print($want - ($i))")dB" "$@" "$dst"
}
# Decoded length in frames (as ffmpeg decodes it: gapless for MP3/Vorbis).
frames() { ffmpeg -loglevel error -i "$1" -map 0:a:0 -ac 1 -f s32le - | wc -c | awk '{print $1/4}'; }
probe() { ffprobe -v error -select_streams a:0 -show_entries stream=codec_name,sample_rate,channels,bits_per_raw_sample,sample_fmt -of csv=p=0 "$1"; }

echo "== making test files in $IN"
# 1. quiet speech, 16-bit mono 22.05 kHz, about -30 LUFS
espeak-ng -w "$G/speech.wav" "Loudness normalization makes quiet speech and loud music play back at the same level. \
  This sentence is here so the clip runs long enough for an integrated measurement, with pauses, like real speech. \
  The quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps over the lazy dog."
to_lufs "$G/speech.wav" "$IN/speech_quiet.wav" -30 -c:a pcm_s16le
# 2. loud music-like mix, 32-bit float WAV 44.1 kHz stereo at -10 LUFS, peaks near 0 dBFS
ffmpeg -loglevel error -y -f lavfi -i "aevalsrc=exprs='0.5*sin(2*PI*110*t)*exp(-3*mod(t,0.5))+0.3*sin(2*PI*220*t+2*sin(2*PI*3*t))+0.2*sin(2*PI*330*t)*exp(-6*mod(t,0.25))+0.4*(random(0)-0.5)*exp(-40*mod(t,0.5))|0.5*sin(2*PI*110*t)*exp(-3*mod(t,0.5))+0.3*sin(2*PI*277*t+2*sin(2*PI*2*t))+0.2*sin(2*PI*440*t)*exp(-6*mod(t+0.1,0.25))+0.4*(random(1)-0.5)*exp(-40*mod(t,0.5))':s=44100:d=20" \
  -c:a pcm_f32le "$G/music.wav"
to_lufs "$G/music.wav" "$IN/music_loud.wav" -10 -c:a pcm_f32le
# 3. REQUIRES limiting: -30 LUFS pink-noise bed with +-0.6 two-sample clicks
#    every 0.5 s (true peak about -1 dBTP): +14 dB of plain gain would put
#    the clicks near +13 dBTP. 24-bit 48 kHz WAV; and the same resampled to a
#    16-bit 44.1 kHz FLAC (ffmpeg's true peak then uses another grid).
ffmpeg -loglevel error -y -f lavfi -i "anoisesrc=color=pink:amplitude=0.5:r=48000:d=20:seed=7" -ac 2 -c:a pcm_f32le "$G/bed.wav"
to_lufs "$G/bed.wav" "$G/bed30.wav" -30.2 -c:a pcm_f32le
ffmpeg -loglevel error -y -f lavfi -i "aevalsrc=exprs='0.6*lt(mod(t,0.5),2/48000)*(1-2*lt(mod(t,0.5),1/48000))':s=48000:d=20:c=stereo" -c:a pcm_f32le "$G/clicks.wav"
sox -m -v 1 "$G/bed30.wav" -v 1 "$G/clicks.wav" -b 24 "$IN/crest_quiet.wav"
sox "$IN/crest_quiet.wav" -r 44100 -b 16 "$IN/crest44.flac"
# 4. drums, 24-bit FLAC 48 kHz stereo, sample peaks -0.5 dBFS, loud (plain gain down)
ffmpeg -loglevel error -y -f lavfi -i "aevalsrc=exprs='0.3*(sin(2*PI*(45+120*exp(-30*mod(t,2)))*t)*exp(-14*mod(t,2))+1.6*(random(0)-0.5)*exp(-60*mod(t+1,2))+0.4*(random(2)-0.5)*exp(-200*mod(t,0.5))+0.01*sin(2*PI*220*t))|0.3*(sin(2*PI*(45+120*exp(-30*mod(t,2)))*t)*exp(-14*mod(t,2))+1.6*(random(1)-0.5)*exp(-60*mod(t+1,2))+0.4*(random(3)-0.5)*exp(-200*mod(t+0.06,0.5))+0.01*sin(2*PI*277*t))':s=48000:d=20" \
  -c:a pcm_f32le "$G/drums.wav"
sox "$G/drums.wav" -b 24 "$IN/drums.flac" gain -n -0.5 2>/dev/null
# 5. sox tone: 20 s 1 kHz at -23 dBFS, 24-bit 48 kHz stereo: must read -23.0 LUFS
sox -n -r 48000 -c 2 -b 24 "$IN/tone_m23.wav" synth 20 sine 1000 gain -23
# 6. MP3 (music at -20 LUFS, 44.1 kHz) and 7. Ogg Vorbis (music at -12 LUFS)
to_lufs "$G/music.wav" "$IN/song_mp3.mp3" -20 -c:a libmp3lame -b:a 192k
to_lufs "$G/music.wav" "$IN/song_ogg.ogg" -12 -c:a libvorbis -q:a 5
# 8. digital silence, 9. a clip too short to gate (0.2 s), 10. random bytes
sox -n -r 48000 -c 2 -b 16 "$IN/silence.wav" trim 0 5
sox -n -r 48000 -c 2 -b 16 "$IN/short.wav" synth 0.2 sine 440 gain -10
head -c 65536 /dev/urandom > "$IN/broken.mp3"
# A 4-minute stereo 48 kHz 24-bit file for memory and speed (not in the set).
# Built from the click+bed material, so it takes the limiter path.
ffmpeg -loglevel error -y -stream_loop 11 -i "$IN/crest_quiet.wav" -c:a pcm_s24le "$W/mem/four_minutes.wav"

run_fanout() { # $1 out dir, rest: function args
  local out=$1; shift
  rm -rf "$out"
  "$FANOUT" run -q --input "$IN" --function "$WASM" --output "$out" --attempts 1 -- "$@" 2>"$out.stderr"
}

echo "== fanout --measure"
run_fanout "$W/measure" --measure --target $TARGET --true-peak $TP; echo "fanout exit code: $? (1 expected: broken.mp3)"
cat "$W/measure"/tone_m23.json
python3 - "$W/measure" <<'EOF'
import json, sys, glob, os
t = json.load(open(os.path.join(sys.argv[1], "tone_m23.json")))
ok = t["integrated_lufs"] is not None and round(t["integrated_lufs"], 1) == -23.0
print(f"tone_m23 --measure reads {t['integrated_lufs']} LUFS: {'PASS' if ok else 'FAIL'}")
for s in ("silence", "short"):
    j = json.load(open(os.path.join(sys.argv[1], s + ".json")))
    print(f"{s} --measure: integrated_lufs={j['integrated_lufs']} gain_db={j['gain_db']}: {'PASS' if j['integrated_lufs'] is None and j['gain_db'] == 0 else 'FAIL'}")
audio = glob.glob(os.path.join(sys.argv[1], "*.wav")) + glob.glob(os.path.join(sys.argv[1], "*.flac"))
print(f"--measure wrote no audio: {'PASS' if not audio else 'FAIL ' + str(audio)}")
EOF

echo "== fanout normalize"
run_fanout "$W/out" --target $TARGET --true-peak $TP; rc=$?
echo "fanout exit code: $rc (1 expected: broken.mp3 fails its own shard)"
SHARDS_FAILED=$(awk -F, 'NR>1 && $2!="ok"' "$W"/out/_fanout/job-*/report.csv | wc -l)
echo "shards not ok: $SHARDS_FAILED (1 expected)"
grep -h "audio:" "$W"/out/_fanout/job-*/logs/*.txt | sed 's/^/  /' | sort -u

echo "== ffmpeg two-pass loudnorm"
loudnorm2() { # $1 in, $2 out
  local in=$1 out=$2 js rate
  js=$(ffmpeg -hide_banner -nostats -i "$in" -af loudnorm=I=$TARGET:TP=$TP:LRA=11:print_format=json -f null - 2>&1 | sed -n '/^{/,/^}/p') || return 1
  [ -n "$js" ] || return 1
  rate=$(ffprobe -v error -select_streams a:0 -show_entries stream=sample_rate -of csv=p=0 "$in")
  local mi mtp mlra mth off
  read -r mi mtp mlra mth off < <(python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print(j["input_i"], j["input_tp"], j["input_lra"], j["input_thresh"], j["target_offset"])' <<<"$js")
  ffmpeg -loglevel error -y -i "$in" -af "loudnorm=I=$TARGET:TP=$TP:LRA=11:measured_I=$mi:measured_TP=$mtp:measured_LRA=$mlra:measured_thresh=$mth:offset=$off:linear=true" -ar "$rate" "$out"
}
export -f loudnorm2; export TARGET TP
mkdir -p "$W/ln"
ln_ext() { case "$1" in *.wav) echo wav;; *) echo flac;; esac; }
LN_JOBS=()
for f in "$IN"/*; do
  b=$(basename "$f"); s=${b%.*}
  [ "$b" = broken.mp3 ] && continue
  LN_JOBS+=("$f $W/ln/$s.$(ln_ext "$b")")
done
run_loudnorm_set() {
  if command -v parallel >/dev/null; then
    printf '%s\n' "${LN_JOBS[@]}" | parallel -j2 --colsep ' ' loudnorm2 {1} {2}
  else
    for j in "${LN_JOBS[@]}"; do loudnorm2 $j; done
  fi
}
run_loudnorm_set 2>/dev/null

echo "== results (ffmpeg ebur128=peak=true on every file)"
PASS=0 FAIL=0
printf '%-16s %-6s %8s %7s | %8s %7s %6s | %8s %7s %6s | %s\n' file path in_I in_TP out_I out_TP dev ln_I ln_TP ln_dev verdict
for f in "$IN"/*; do
  b=$(basename "$f"); s=${b%.*}
  if [ "$b" = broken.mp3 ]; then
    if [ "$SHARDS_FAILED" = 1 ] && [ ! -e "$W/out/$s.flac" ] && grep -qh "broken.mp3" "$W"/out/_fanout/job-*/logs/*.txt; then v=PASS; else v=FAIL; fi
    [ $v = PASS ] && PASS=$((PASS+1)) || FAIL=$((FAIL+1))
    printf '%-16s %s\n' "$b" "shard failed alone ($(grep -h 'broken.mp3' "$W"/out/_fanout/job-*/logs/*.txt | head -1)): $v"
    continue
  fi
  case "$b" in *.wav) o="$W/out/$s.wav";; *) o="$W/out/$s.flac";; esac
  path=$(python3 -c "import json;j=json.load(open('$W/measure/$s.json'));print('none' if j['integrated_lufs'] is None else ('limit' if j['limiting_needed'] else 'plain'))")
  read -r ii itp <<<"$(meter "$f")"
  why=()
  if [ ! -s "$o" ]; then
    printf '%-16s %-6s %8s %7s | missing output %s\n' "$b" "$path" "$ii" "$itp" "$o"; FAIL=$((FAIL+1)); continue
  fi
  read -r oi otp <<<"$(meter "$o")"
  lo=$W/ln/$s.$(ln_ext "$b"); li=- ltp=- ldev=-
  [ -s "$lo" ] && read -r li ltp <<<"$(meter "$lo")"
  dev=$(python3 -c "print(f'{$oi-($TARGET):+.1f}')" 2>/dev/null || echo -)
  [ "$li" != - ] && [ "$li" != "-inf" ] && ldev=$(python3 -c "print(f'{$li-($TARGET):+.1f}')" 2>/dev/null || echo -)
  # length, channels, rate, sample format
  [ "$(frames "$f")" = "$(frames "$o")" ] || why+=("length $(frames "$f") -> $(frames "$o")")
  pi=$(probe "$f"); po=$(probe "$o")
  IFS=, read -r ic ifm ir ich ib <<<"$pi"; IFS=, read -r oc ofm or och ob <<<"$po"
  [ "$ir/$ich" = "$or/$och" ] || why+=("rate/ch $ir/$ich -> $or/$och")
  case "$ic" in
    pcm_*) [ "$ic" = "$oc" ] || why+=("format $ic -> $oc");;
    flac) [ "$oc" = flac ] && [ "$ib" = "$ob" ] || why+=("flac bits $ib -> $oc $ob");;
    *) [ "$oc" = flac ] && [ "$ob" = 24 ] || why+=("lossy -> $oc $ob (want 24-bit flac)");;
  esac
  case $path in
    none) [ "$oi $otp" = "$ii $itp" ] || why+=("not unchanged: $ii $itp -> $oi $otp");;
    plain) python3 -c "import sys; sys.exit(0 if abs($oi-($TARGET))<=0.5 and $otp<=$TP else 1)" || why+=("plain: I $oi TP $otp");;
    limit) python3 -c "import sys; sys.exit(0 if abs($oi-($TARGET))<=1.0 and $otp<=$TP else 1)" || why+=("limited: I $oi TP $otp");;
  esac
  if [ ${#why[@]} -eq 0 ]; then v=PASS; PASS=$((PASS+1)); else v="FAIL: ${why[*]}"; FAIL=$((FAIL+1)); fi
  printf '%-16s %-6s %8s %7s | %8s %7s %6s | %8s %7s %6s | %s\n' "$b" "$path" "$ii" "$itp" "$oi" "$otp" "$dev" "$li" "$ltp" "$ldev" "$v"
done

echo "== timings (median of $RUNS runs, whole set; fanout: 2 workers; loudnorm: $(command -v parallel >/dev/null && echo 'parallel -j2' || echo sequential))"
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
tf=(); tl=()
for r in $(seq "$RUNS"); do
  t0=$(date +%s.%N); run_fanout "$W/t_out" --target $TARGET; t1=$(date +%s.%N)
  tf+=("$(python3 -c "print(round($t1-$t0,2))")")
  t0=$(date +%s.%N); run_loudnorm_set 2>/dev/null; t1=$(date +%s.%N)
  tl+=("$(python3 -c "print(round($t1-$t0,2))")")
done
echo "fanout audio.wasm: ${tf[*]} s -> median $(printf '%s\n' "${tf[@]}" | median) s"
echo "ffmpeg loudnorm x2: ${tl[*]} s -> median $(printf '%s\n' "${tl[@]}" | median) s"

echo "== 4-minute stereo 48 kHz 24-bit file (memory, speed)"
for mem in 256MiB 160MiB; do
  rm -rf "$W/mem_out"
  t0=$(date +%s.%N)
  "$FANOUT" run -q --input "$W/mem" --function "$WASM" --output "$W/mem_out" --attempts 1 --memory $mem -- --target $TARGET 2>"$W/mem.stderr"; rc=$?
  t1=$(date +%s.%N)
  echo "--memory $mem: exit $rc in $(python3 -c "print(round($t1-$t0,2))") s; $(grep -h 'audio:' "$W"/mem_out/_fanout/job-*/logs/*.txt | tail -1 | grep -o '\[memory.*\]\|limited:.*passes\|plain gain[^,]*')"
  [ -s "$W/mem_out/four_minutes.wav" ] && echo "  output: $(meter "$W/mem_out/four_minutes.wav") (I, TP by ffmpeg)"
done

echo "== $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
