#!/usr/bin/env bash
# petastorm 0.13.1 patched for current pyarrow (>= 15, tried to 23.0.1) and
# numpy 2, still working on pyarrow 12-14 + numpy 1 (third_party/petastorm/
# README.md says what the patch changes). PyPI carries 0.13.1 as a wheel only
# (no sdist; the last sdist is 0.10.0), and it is pure Python: the pristine
# wheel is downloaded once (checked against its sha256), unpacked, patched
# and packed again as petastorm-0.13.1+courier.<patch hash>, cached under
# $COURIER_CACHE (default ~/.cache/courier-spark)/wheels. Prints the wheel's
# path on stdout (logs on stderr); idempotent: a cached wheel for the same
# patch is printed at once. It installs nothing.
#   PYTHON   the interpreter that runs pip download (default: .venv/bin/python,
#            else python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PATCH="$ROOT/third_party/petastorm/petastorm-0.13.1-pyarrow-numpy2.patch"
VERSION=0.13.1
PRISTINE=petastorm-$VERSION-py2.py3-none-any.whl
PRISTINE_SHA256=7d073f01f65ba6b50e05fae8254d0f469881bcaf41ead2028e676517c45bbd1b
CACHE="${COURIER_CACHE:-$HOME/.cache/courier-spark}"
WHEELS="$CACHE/wheels"
DOWNLOADS="$CACHE/downloads"
log() { echo "[petastorm] $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || true)"; fi
[ -n "$PY" ] && [ -x "$PY" ] || die "no python: set PYTHON or run scripts/bootstrap.sh"
[ -f "$PATCH" ] || die "missing patch $PATCH"
command -v patch >/dev/null || die "the 'patch' program is needed (apt-get install patch)"

key="$(sha256sum "$PATCH" | cut -c1-12)"
local_version="$VERSION+courier.$key"
out="$WHEELS/petastorm-$local_version-py2.py3-none-any.whl"
mkdir -p "$WHEELS" "$DOWNLOADS"
exec 9>"$CACHE/petastorm-build.lock"
flock 9   # one build at a time; a second caller waits and then finds the wheel
if [ -f "$out" ]; then
  echo "$out"
  exit 0
fi

pristine="$DOWNLOADS/$PRISTINE"
if [ ! -f "$pristine" ] || ! echo "$PRISTINE_SHA256  $pristine" | sha256sum -c --status; then
  log "downloading $PRISTINE from the package index"
  rm -f "$pristine"
  "$PY" -m pip --disable-pip-version-check download -q --no-deps --only-binary :all: \
      "petastorm==$VERSION" -d "$DOWNLOADS" >&2 || die "pip download petastorm==$VERSION failed"
  [ -f "$pristine" ] || die "pip did not leave $pristine"
fi
echo "$PRISTINE_SHA256  $pristine" | sha256sum -c --status \
  || die "$pristine does not have the sha256 of the published petastorm $VERSION wheel"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
src="$tmp/src"
"$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$pristine" "$src" \
  || die "could not unpack $pristine"
patch -p1 -d "$src" --dry-run -s < "$PATCH" >"$tmp/patch.log" 2>&1 \
  || die "patch does not apply to petastorm $VERSION: $(head -1 "$tmp/patch.log")"
patch -p1 -d "$src" -s < "$PATCH" >/dev/null || die "patch failed"

# Pack again as $local_version: dist-info renamed, Version set, RECORD rewritten.
"$PY" - "$src" "$VERSION" "$local_version" "$out.part" <<'EOF' || die "could not pack the patched wheel"
import base64, hashlib, os, sys, zipfile
src, version, local, dest = sys.argv[1:]
old_info, new_info = f"petastorm-{version}.dist-info", f"petastorm-{local}.dist-info"
os.rename(os.path.join(src, old_info), os.path.join(src, new_info))
meta = os.path.join(src, new_info, "METADATA")
text = open(meta, encoding="utf-8").read()
assert f"\nVersion: {version}\n" in text
open(meta, "w", encoding="utf-8").write(text.replace(f"\nVersion: {version}\n", f"\nVersion: {local}\n", 1))
files = sorted(os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
               for d, _, fs in os.walk(src) for f in fs)
files = [f for f in files if f != f"{new_info}/RECORD"]
records = []
with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
    for f in files:
        data = open(os.path.join(src, f), "rb").read()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{f},sha256={digest},{len(data)}")
        z.writestr(zipfile.ZipInfo(f, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    records.append(f"{new_info}/RECORD,,")
    z.writestr(zipfile.ZipInfo(f"{new_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)),
               "\n".join(records) + "\n", zipfile.ZIP_DEFLATED)
EOF
mv "$out.part" "$out"
log "built $out"
echo "$out"
