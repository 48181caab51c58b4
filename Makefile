# bonsai-mcu developer entry points. `make example` and `make test` are the
# two set-up commands of the README; each installs what it needs.
PYTHON ?= python3
OUT ?= out

.PHONY: install install-train toolchains example test bench clean

install:
	$(PYTHON) -m pip install -q -e '.[test]'

# The train extra brings PyTorch (CPU build) for bonsai_mcu.train and its tests.
install-train:
	$(PYTHON) -m pip install -q -e '.[test,train]'

toolchains:
	./scripts/install-toolchains.sh

# Generate C for the bundled ternary digits classifier and verify it: host C
# against the numpy reference on all 450 held-out digits.
example: install
	bonsai-mcu generate examples/digits/digits.onnx -o $(OUT)/digits --name digits \
		--calibration examples/digits/digits_calibration.npy --target host
	bonsai-mcu verify examples/digits/digits.onnx --name digits \
		--calibration examples/digits/digits_calibration.npy --inputs examples/digits/digits_test.npy \
		--labels examples/digits/digits_test_labels.npy

# The second run repeats the suite with every host simulator and kernel
# harness built under AddressSanitizer and UndefinedBehaviorSanitizer
# (BONSAI_SANITIZE=1); any sanitizer report fails the test that ran the build.
test: install-train toolchains
	$(PYTHON) -m pytest -q
	BONSAI_SANITIZE=1 $(PYTHON) -m pytest -q

# Instructions per layer and per inference on emulated Cortex-M4, M7, M55 and RV32 (QEMU),
# flash and RAM, written to BENCHMARKS.md; a few minutes on two cores.
bench: install toolchains
	bonsai-mcu bench --output BENCHMARKS.md

clean:
	rm -rf $(OUT) build dist *.egg-info
