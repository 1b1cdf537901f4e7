#!/usr/bin/env bash
# Fetch Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, https://github.com/zalandoresearch/fashion-mnist;
# © 2017 Zalando SE, MIT license) from Debian's `dataset-fashion-mnist` package
# (0.0~git20200523.55506a9-1, a 31 MB .deb) into data/fashion-mnist/ (30 MB):
#
#     train-images-idx3-ubyte.gz   60000 images of 28×28 u8 pixels (26 MB; 47 MB unpacked)
#     train-labels-idx1-ubyte.gz   60000 labels 0..=9              (29 KB)
#     t10k-images-idx3-ubyte.gz    10000 images of 28×28            (4.4 MB; 7.8 MB unpacked)
#     t10k-labels-idx1-ubyte.gz    10000 labels                     (5 KB)
#
# in the IDX format of MNIST (http://yann.lecun.com/exdb/mnist/), read by `tasks::idx`.
# Debian's .gz files are not byte-identical to upstream's (their gzip headers carry no file
# name and a 2020-06-05 timestamp), so upstream's published MD5s of the .gz files do not
# match; the unpacked bytes are upstream's and are checked against the SHA-256s below.
#
# Usage: scripts/fetch-fashion-mnist.sh [OUTDIR]   (default: data/fashion-mnist, relative to
# the repository root). Idempotent: an existing complete OUTDIR is kept; an incomplete one is
# refused. Needs apt-get and dpkg-deb (Debian, Ubuntu) with package lists that know
# dataset-fashion-mnist, gzip and sha256sum; nothing is installed and no root is needed.
# Without them, download the four files above from the upstream page into OUTDIR by hand.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/fashion-mnist}"
out="${out%/}"
package="dataset-fashion-mnist"
inside="usr/share/datasets/fashion-mnist"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
# SHA-256 of each file's unpacked (gunzipped) bytes.
declare -A sha256=(
    [train-images-idx3-ubyte.gz]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
    [train-labels-idx1-ubyte.gz]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
    [t10k-images-idx3-ubyte.gz]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
    [t10k-labels-idx1-ubyte.gz]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)
manual="download the four files from https://github.com/zalandoresearch/fashion-mnist#get-the-data into $out by hand"

if [[ -d "$out" ]]; then
    missing=()
    for f in "${files[@]}"; do
        [[ -s "$out/$f" ]] || missing+=("$f")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "fetch-fashion-mnist: $out already holds the four files ($(du -sh "$out" | cut -f1)); nothing to do."
        exit 0
    fi
    if [[ -n "$(ls -A "$out")" ]]; then
        echo "fetch-fashion-mnist: error: $out exists but lacks ${missing[*]}; remove it (or pass another OUTDIR) and run again" >&2
        exit 1
    fi
fi
for tool in apt-get dpkg-deb gzip sha256sum; do
    command -v "$tool" >/dev/null || {
        echo "fetch-fashion-mnist: error: '$tool' not found (this script needs Debian or Ubuntu); $manual" >&2
        exit 1
    }
done

parent="$(dirname "$out")"
mkdir -p "$parent"
# Work beside OUTDIR, so that the final rename stays on one file system.
tmp="$(mktemp -d "$parent/.fetch-fashion-mnist.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-fashion-mnist: downloading the Debian package $package with apt-get ..."
if ! (cd "$tmp" && apt-get download "$package") >"$tmp/apt.log" 2>&1; then
    cat "$tmp/apt.log" >&2
    echo "fetch-fashion-mnist: error: 'apt-get download $package' failed; if apt cannot locate the package," \
        "refresh the package lists (as root: apt-get update; Debian bookworm has it in main)," \
        "or $manual" >&2
    exit 1
fi
deb="$(ls "$tmp"/"$package"_*.deb)"

echo "fetch-fashion-mnist: extracting $(basename "$deb") ..."
dpkg-deb -x "$deb" "$tmp/root"
mkdir "$tmp/out"
for f in "${files[@]}"; do
    src="$tmp/root/$inside/$f"
    [[ -s "$src" ]] || {
        echo "fetch-fashion-mnist: error: $(basename "$deb") has no $inside/$f; $manual" >&2
        exit 1
    }
    got="$(gzip -dc "$src" | sha256sum | cut -d' ' -f1)"
    [[ "$got" == "${sha256[$f]}" ]] || {
        echo "fetch-fashion-mnist: error: $f unpacks to bytes with SHA-256 $got, expected ${sha256[$f]}; $manual" >&2
        exit 1
    }
    cp "$src" "$tmp/out/$f"
done

[[ -d "$out" ]] && rmdir "$out"   # empty, as checked above
mv "$tmp/out" "$out"
echo "fetch-fashion-mnist: wrote $out ($(du -sh "$out" | cut -f1)): ${files[*]}"
