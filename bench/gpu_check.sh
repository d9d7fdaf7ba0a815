#!/usr/bin/env bash
# The GPU check on a bare CUDA machine (docs/gpu.md): installs the carried wheels (.carry/whl,
# made by bench/gpu_carry.py) into /tmp/site, then runs bench/gpu_check.py with this checkout's
# package. Results go to $OUT (or the first argument, or gpu_check_out/): gpu_check.json,
# gpu_check.md, log.txt, install.log. Extra arguments go to gpu_check.py.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT_DIR="${OUT:-gpu_check_out}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT_DIR="$1"; shift; fi
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
{
  echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
  if ls .carry/whl/*.whl >/dev/null 2>&1 && ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "no pip: unpacking the wheels into $SITE (zipfile, keeping executable bits)"
    "$PY" - "$SITE" .carry/whl/*.whl <<'PYEOF'
import os, sys, zipfile
site = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = archive.extract(info, site)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(path, mode & 0o777)
    print("unpacked", os.path.basename(wheel))
PYEOF
  elif ls .carry/whl/*.whl >/dev/null 2>&1; then
    if ! "$PY" -m pip install --no-index --no-deps --disable-pip-version-check --target "$SITE" .carry/whl/*.whl; then
      echo "warning: installing the carried wheels together failed; one by one:"
      for wheel in .carry/whl/*.whl; do
        "$PY" -m pip install --no-index --no-deps --disable-pip-version-check --upgrade --target "$SITE" "$wheel" \
          || echo "warning: $wheel did not install"
      done
    fi
  else
    echo "no .carry/whl: run python bench/gpu_carry.py first where there is network"
  fi
} > "$OUT_DIR/install.log" 2>&1
tail -n 3 "$OUT_DIR/install.log"
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# Stage 1's phone features read pocketsphinx's acoustic model; the image lacks pocketsphinx, so
# bench/gpu_carry.py carries the model's files.
if [ -d .carry/phone_model ]; then export TALKINGHEAD_PHONE_MODEL="$PWD/.carry/phone_model"; fi
"$PY" bench/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
