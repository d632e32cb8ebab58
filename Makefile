# qemu-pcow: thin wrapper over ./configure, meson/ninja and the QEMU build.
#
#   make                 build (runs ./configure first if needed)
#   make check           install deps, build, run tests/pcow/run-tests.sh
#   make check-long      build, run the model-based test for 20 minutes
#                        (MODEL_SECONDS=N) and the fuzzer for 10
#                        (FUZZ_MINUTES=N; 0 or no clang: skipped)
#   make demo            build, run tests/pcow/demo.sh
#   make bench           build, run tests/pcow/bench/run-bench.sh
#   make bench-quick     build, run tests/pcow/bench/run-bench.sh --quick
#   make bench-monitor   build the standalone parts, run
#                        tests/pcow/bench/bench-monitor.sh
#   make bench-overhead  build, run tests/pcow/bench/bench-overhead.sh:
#                        QEMU's memory against NVDIMM size (seconds)
#   make bench-compact   build the standalone parts, run
#                        tests/pcow/bench/bench-compact.sh: a 64 GiB image
#                        with 200k random clusters before and after
#                        compact (minutes; --scale K for less disk)
#   make bench-lifecycle build, run tests/pcow/bench/bench-lifecycle.sh:
#                        migration, savevm/loadvm and save/restore of a
#                        TCG guest with a 16 GiB NVDIMM, 1% written,
#                        pcow against raw (about 15 minutes)
#   make bench-clones    build, run tests/pcow/bench/bench-clones.sh:
#                        start time of 1, 4 and 16 TCG clones of a VM
#                        snapshot (RAM on pcow) against raw restores and
#                        cold boots, against RAM size, summed PSS of 8
#                        clones, COW copies (8 to 12 minutes; --quick
#                        a smoke run, --rounds N)
#                        (BENCH_ARGS="..." adds arguments to any of these;
#                        BENCH_ARGS=--publish commits-ready results in
#                        docs/figures/, see docs/benchmarks.rst)
#   make install         install into the configured prefix (DESTDIR works):
#                        pcow-img, its manual page pcow-img(1), QEMU;
#                        where AppArmor is installed, also its snippet for
#                        libvirt-confined QEMUs into $(APPARMOR_DIR)
#                        (default /etc/apparmor.d, whatever the prefix;
#                        APPARMOR_DIR= skips it; see docs/pcow.rst,
#                        "Confined hosts")
#   make clean           remove build products, keep configuration and the
#                        fetched QEMU source
#   make distclean       remove build/ (and build-sanitizers/, which
#                        make check sets up) entirely
#
# The scripts run by check, demo and bench get the paths in the environment:
# BUILD (build directory), QEMU, QEMU_IMG, PCOW_IMG.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
.DEFAULT_GOAL := all

BUILD := build
QEMU_BUILD := $(BUILD)/qemu-build
QEMU_TARGETS := qemu-system-x86_64 qemu-img qemu-io qemu-nbd
NINJA ?= ninja
NINJAFLAGS ?=

# All the work happens inside ninja, which runs jobs in parallel itself.
.NOTPARALLEL:

# build/config.mk is written by ./configure.  Make remakes it (running
# ./configure with the options it was last run with, or none) when it is
# missing or older than configure.  Not for the cleaning targets, nor for
# check and demo, which install the dependencies first and then build in a
# sub-make.
ifeq ($(filter clean distclean help deps check demo,$(MAKECMDGOALS)),)
-include $(BUILD)/config.mk
endif

$(BUILD)/config.mk: configure
	./configure $(CONFIGURE_ARGS)

export BUILD := $(BUILD)
export QEMU := $(CURDIR)/$(BUILD)/qemu-system-x86_64
export QEMU_IMG := $(CURDIR)/$(BUILD)/qemu-img
export PCOW_IMG := $(CURDIR)/$(BUILD)/pcow-img
export DESTDIR

.PHONY: all build-standalone build-qemu check check-long demo bench \
        bench-quick bench-monitor bench-overhead bench-compact \
        bench-lifecycle bench-clones install \
        clean distclean \
        help deps

all: build-standalone build-qemu

help:
	@sed -n '3,/^$$/s/^# \{0,1\}//p' Makefile

# The standalone parts (./meson.build): libpcow, monitor, pcow-img, tests.
build-standalone: $(BUILD)/config.mk
	@if [ ! -f meson.build ]; then \
	    echo "make: no meson.build: standalone build skipped"; \
	else \
	    if [ ! -f $(BUILD)/build.ninja ]; then \
	        $(if $(MESON_CC),CC=$(MESON_CC)) meson setup $(BUILD) $(MESON_ARGS); \
	    fi; \
	    $(NINJA) -C $(BUILD) $(NINJAFLAGS); \
	fi

# QEMU: refresh the work tree (our files, patches), build, link binaries.
build-qemu: $(BUILD)/config.mk
ifeq ($(WITH_QEMU),yes)
	scripts/prepare-qemu.sh
	$(NINJA) -C $(QEMU_BUILD) $(NINJAFLAGS) $(QEMU_TARGETS)
	ln -sfn qemu-build/qemu-system-x86_64 $(BUILD)/qemu-system-x86_64
	ln -sfn qemu-build/qemu-img $(BUILD)/qemu-img
	ln -sfn qemu-build/qemu-io $(BUILD)/qemu-io
	ln -sfn qemu-build/qemu-nbd $(BUILD)/qemu-nbd
else
	@echo "make: configured with --disable-qemu: QEMU not built"
endif

deps:
	scripts/install-deps.sh

check: deps
	$(MAKE) all
	@test -x tests/pcow/run-tests.sh || \
	    { echo "make check: tests/pcow/run-tests.sh is missing" >&2; exit 1; }
	tests/pcow/run-tests.sh

# Long runs of the randomized tests; each prints how to reproduce a failure.
MODEL_SECONDS ?= 1200
FUZZ_MINUTES ?= 10
check-long: build-standalone
	PCOW_MODEL_SECONDS=$(MODEL_SECONDS) PCOW_IMG=$(PCOW_IMG) \
	    $(BUILD)/tests/pcow/model/test-model
	@if [ "$(FUZZ_MINUTES)" = 0 ]; then \
	    echo "make check-long: fuzzer skipped (FUZZ_MINUTES=0)"; \
	elif ! command -v clang >/dev/null; then \
	    echo "make check-long: fuzzer skipped (no clang)"; \
	else \
	    echo "tests/pcow/fuzz/run-fuzz.sh $(FUZZ_MINUTES)"; \
	    tests/pcow/fuzz/run-fuzz.sh $(FUZZ_MINUTES); \
	fi

demo: deps
	$(MAKE) all
	@test -x tests/pcow/demo.sh || \
	    { echo "make demo: tests/pcow/demo.sh is missing" >&2; exit 1; }
	tests/pcow/demo.sh

# The guest benchmarks need QEMU; bench-monitor only the standalone build.
bench bench-quick: all
bench-monitor: build-standalone
bench-overhead: all
	tests/pcow/bench/bench-overhead.sh $(BENCH_ARGS)
bench-compact: build-standalone
	tests/pcow/bench/bench-compact.sh $(BENCH_ARGS)
bench-lifecycle: all
	tests/pcow/bench/bench-lifecycle.sh $(BENCH_ARGS)
bench-clones: all
	tests/pcow/bench/bench-clones.sh $(BENCH_ARGS)
bench bench-quick bench-monitor:
	@script=tests/pcow/bench/$(if $(filter bench-monitor,$@),bench-monitor.sh,run-bench.sh); \
	test -x $$script || { echo "make $@: $$script is missing" >&2; exit 1; }; \
	echo "$$script $(if $(filter bench-quick,$@),--quick) $(BENCH_ARGS)"; \
	$$script $(if $(filter bench-quick,$@),--quick) $(BENCH_ARGS)

# AppArmor reads its policy from /etc/apparmor.d only, so the snippet goes
# there, not under the prefix.  scripts/install-apparmor.sh installs
# nothing where that directory does not exist (no AppArmor).
APPARMOR_DIR ?= /etc/apparmor.d

install: all
	if [ -f meson.build ]; then meson install -C $(BUILD) --no-rebuild; fi
	$(if $(APPARMOR_DIR),scripts/install-apparmor.sh --prefix $(PREFIX) \
	    --apparmor-dir $(APPARMOR_DIR) $(if $(DESTDIR),--destdir $(DESTDIR)))
ifeq ($(WITH_QEMU),yes)
	# Build what QEMU installs (not its own test programs), then install.
	$(NINJA) -C $(QEMU_BUILD) $(NINJAFLAGS) $$(meson introspect --targets \
	    $(QEMU_BUILD) | python3 -c 'import json, os, sys; print(" ".join( \
	    os.path.relpath(f, sys.argv[1]) for t in json.load(sys.stdin) \
	    if t["installed"] for f in t["filename"]))' $(QEMU_BUILD))
	meson install -C $(QEMU_BUILD) --no-rebuild
endif

clean:
	if [ -f $(BUILD)/build.ninja ]; then $(NINJA) -C $(BUILD) clean; fi
	if [ -f $(QEMU_BUILD)/build.ninja ]; then $(NINJA) -C $(QEMU_BUILD) clean; fi
	rm -f $(BUILD)/qemu-system-x86_64 $(BUILD)/qemu-img $(BUILD)/qemu-io \
	    $(BUILD)/qemu-nbd

distclean:
	rm -rf $(BUILD) build-sanitizers
