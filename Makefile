# kswgdb: two commands on a fresh machine, `make demo` and `make test`.
# Every target depends on what it needs, so either works on a clean clone.

PYTHON ?= python3
STAMP  := .setup.stamp
IMAGE  := images/kswtest.elf

.PHONY: all setup guest test unit integration demo lint bench clean image-linux test-linux

all: guest

# Installs what is missing: QEMU and gdb from Debian packages (we are root), then the
# Python package and its dependencies. The stamp keeps a second run instant.
setup: $(STAMP)
$(STAMP): pyproject.toml
	@if ! command -v qemu-system-x86_64 >/dev/null || ! command -v gdb >/dev/null; then \
		echo "installing qemu-system-x86 and gdb with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			qemu-system-x86 gdb >/dev/null; \
	fi
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
$(LINUX_STAMP): images/linux/build.py images/linux/init
	$(PYTHON) images/linux/build.py
	@touch $@

# Only the Debian kernel suite: LKDTM's stack corruption caught, and a hot path watched
# with no false positive (also part of `make test`).
test-linux: setup image-linux
	KSWGDB_LINUX_TESTS=1 $(PYTHON) -m pytest -q -s -p no:cacheprovider tests/linux

clean:
	$(MAKE) -C guest clean
	rm -rf images/linux/cache images/linux/out
	rm -f $(STAMP)
