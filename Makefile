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

.PHONY: all setup guest test unit integration demo lint bench clean image-linux test-linux

all: guest

# Installs what is missing: QEMU, gdb, gcc, make and python3-venv from Debian packages
# (as root), then kswgdb and its Python dependencies into $(VENV). The stamp, inside
# the venv, keeps a second run instant; removing the venv redoes the Python part.
setup: $(STAMP)
$(STAMP): pyproject.toml setup.py
	@missing=""; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	command -v gdb >/dev/null || missing="$$missing gdb"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v make >/dev/null || missing="$$missing make"; \
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

# Everything, in one pytest run: unit, integration on the test kernel, and the Debian
# kernel suite (tests/linux; its image is built from Debian's packages on first use).
test: setup guest image-linux
	KSWGDB_LINUX_TESTS=1 $(PYTHON) -m pytest -q -p no:cacheprovider

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
$(LINUX_STAMP): images/linux/build.py images/linux/init | $(STAMP)
	$(PYTHON) images/linux/build.py
	@touch $@

# Only the Debian kernel suite: LKDTM's stack corruption caught, and a hot path watched
# with no false positive (also part of `make test`).
test-linux: setup image-linux
	KSWGDB_LINUX_TESTS=1 $(PYTHON) -m pytest -q -s -p no:cacheprovider tests/linux

clean:
	$(MAKE) -C guest clean
	rm -rf images/linux/cache images/linux/out
	rm -rf $(VENV) .setup.stamp
