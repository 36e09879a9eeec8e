# kswgdb: two commands on a fresh machine, `make demo` and `make test`.
# Every target depends on what it needs, so either works on a clean clone.

# The Python side lives in a project venv: Debian 12's own python3 is "externally
# managed" (PEP 668) and refuses `pip install` outside one. SYSTEM_PYTHON only
# creates the venv; everything after runs $(PYTHON), the venv's interpreter.
SYSTEM_PYTHON ?= python3
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.kswgdb-setup.stamp
IMAGE  := images/kswtest.elf
# Debian packages `make setup` installs when their command is missing.
APT_GET ?= apt-get

.PHONY: all setup guest test unit integration demo lint bench clean image-linux test-linux \
	qemu10 integration-qemu10

all: guest

# Installs what is missing: QEMU, qemu-img, gdb, crash, gcc, make and python3-venv from Debian packages
# (as root), then kswgdb and its Python dependencies into $(VENV). The stamp, inside
# the venv, keeps a second run instant; removing the venv redoes the Python part.
setup: $(STAMP)
$(STAMP): pyproject.toml setup.py
	@missing=""; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	command -v gdb >/dev/null || missing="$$missing gdb"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v make >/dev/null || missing="$$missing make"; \
	command -v qemu-img >/dev/null || missing="$$missing qemu-utils"; \
	command -v crash >/dev/null || missing="$$missing crash"; \
	$(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get"; \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq \
			$$missing >/dev/null || { echo "make setup: could not install$$missing (run as root)"; exit 1; }; \
	fi
	@test -x $(PYTHON) || { echo "creating the project venv $(VENV)"; $(SYSTEM_PYTHON) -m venv $(VENV); }
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

guest: $(IMAGE)
$(IMAGE): $(wildcard guest/*.c guest/*.h guest/*.S guest/*.ld guest/tools/*.py) guest/Makefile
	$(MAKE) -C guest

# Everything: unit, integration on the test kernel and the Debian kernel suite (tests/linux;
# its image is built from Debian's packages on first use) with the system's QEMU, then the
# integration suite again with QEMU 10.0 (fetched from Debian's packages on first use),
# less what does not depend on the QEMU version (packaging, the plugin engine: one_qemu).
# That second pass pins the gdbstub engine (auto would take the plugin on QEMU 10): the
# plugin engine's own tests run every scenario on both engines and compare their hits.
test: setup guest image-linux qemu10
	KSWGDB_LINUX_TESTS=1 $(PYTHON) -m pytest -q -p no:cacheprovider
	KSWGDB_QEMU=$(QEMU10) KSWGDB_ENGINE=gdbstub $(PYTHON) -m pytest -q -p no:cacheprovider \
		-m "not one_qemu" tests/integration

unit: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

integration: setup guest
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

# Boots the bundled test kernel, runs scenario 3 (silent stack corruption by another
# thread) and shows kswgdb catching the write.
demo: setup guest
	$(PYTHON) -m kswgdb demo

lint: setup
	$(PYTHON) -m ruff check kswgdb tests bench

bench: setup guest
	$(PYTHON) bench/armed_call.py

# Debian's cloud kernel + vmlinux + LKDTM + busybox initramfs (images/linux.toml), from
# Debian's packages into images/linux/cache (nothing installed system-wide). The stamp
# makes a second run do nothing.
LINUX_STAMP := images/linux/out/.stamp
image-linux: $(LINUX_STAMP)
$(LINUX_STAMP): images/linux/build.py images/linux/init \
		$(wildcard tests/fixtures/modules/kswbug/*) | $(STAMP)
	$(PYTHON) images/linux/build.py
	@touch $@

# Only the Debian kernel suite: LKDTM's stack corruption caught, and a hot path watched
# with no false positive (also part of `make test`).
test-linux: setup image-linux
	KSWGDB_LINUX_TESTS=1 $(PYTHON) -m pytest -q -s -p no:cacheprovider tests/linux

# QEMU 10.0 from Debian's bookworm-backports packages, unpacked into build/qemu10 (or
# $KSWGDB_QEMU10_DIR) with a private apt state (nothing installed, the system's apt state
# untouched) by kswgdb.qemu.fetch, which writes the stamp once the binary is checked.
# The integration suite runs against it as well as against the system's QEMU (7.2 on
# Debian 12; docs/qemu-versions.md says what differs), and the TCG plugin engine's tests
# use the same cache (exported below), adding the plugin's headers to it on first use.
export KSWGDB_QEMU10_DIR := $(abspath $(or $(KSWGDB_QEMU10_DIR),build/qemu10))
QEMU10       := $(KSWGDB_QEMU10_DIR)/bin/qemu-system-x86_64
QEMU10_STAMP := $(KSWGDB_QEMU10_DIR)/.stamp
qemu10: $(QEMU10_STAMP)
$(QEMU10_STAMP): | $(STAMP)
	$(PYTHON) -m kswgdb.qemu.fetch

# The test-kernel integration suite against QEMU 10.0 (also part of `make test`).
integration-qemu10: setup guest qemu10
	KSWGDB_QEMU=$(QEMU10) KSWGDB_ENGINE=gdbstub $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

clean:
	$(MAKE) -C guest clean
	rm -rf images/linux/cache images/linux/out build/qemu10
	rm -rf $(VENV) .setup.stamp
