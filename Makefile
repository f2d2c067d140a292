# Two commands for a new user (README): `make demo` and `make test`. Both set everything up first;
# setting up is idempotent and takes about a second when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Debian packages: the dataplane tools, the BGP peers we interoperate with, and the VM for the kernel
# phase (qemu, Debian's generic kernel with 9p, busybox for virtme-ng's initramfs, squashfs for Python), and
# the guests' own clients the tests run against the host's DHCP, RA and virtual addresses (udhcpc, dhclient,
# dhcpcd, rdisc6, keepalived; dnsmasq as the reference the DHCP benchmark compares with), and conntrackd,
# which replicates the gateways' connection state (conntrack to look at it), and prometheus for promtool,
# which the tests run over every daemon's /metrics and the sample alert rules. The gateway VM image:
# debootstrap for its root, fdisk (sfdisk), grub-pc-bin and qemu-utils to make the disk without loop
# devices, cloud-image-utils (cloud-localds) for the test's config drive. strongSwan for the tenants' IPsec
# sites: charon-systemd (one charon per gateway, no pid file), swanctl for the test's sites, the standard
# plugins for ECP and GCM (openssl, gcm), pki for the certificates the tests of sites with certificates make.
APT_PACKAGES := iproute2 iputils-ping nftables tcpdump procps kmod bc frr gobgpd iperf3 \
	qemu-system-x86 linux-image-amd64 busybox-static squashfs-tools \
	udhcpc isc-dhcp-client dhcpcd-base ndisc6 keepalived dnsmasq-base conntrack conntrackd prometheus \
	debootstrap fdisk grub-pc-bin qemu-utils cloud-image-utils \
	charon-systemd strongswan-swanctl libstrongswan-standard-plugins strongswan-pki

.PHONY: setup system venv demo test test-host test-kernel gateway-image test-image bench clean install

setup: system venv

system:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
			>/tmp/nvfabric-apt.log 2>&1 || { tail -30 /tmp/nvfabric-apt.log; exit 1; }; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[lab,test]'
	@touch $@

demo: setup
	$(BIN)/nvfabric lab demo

# Host phase: everything that does not need VRF/GRE. Kernel phase: the tests marked `kernel`, all in one
# VM boot when this kernel lacks VRF/GRE (`nvfabric lab kernel` decides). Both phases print their slowest
# tests: the suite has a time budget, and the log of every run says where it goes.
DURATIONS = --durations=15 --durations-min=10
test: setup
	$(BIN)/pytest -m "not kernel" $(DURATIONS) tests
	$(BIN)/nvfabric lab kernel -- $(BIN)/pytest -m kernel -p no:cacheprovider $(DURATIONS) tests/kernel
	$(MAKE) --no-print-directory test-image

test-host: setup
	$(BIN)/pytest -m "not kernel" $(DURATIONS) tests

test-kernel: setup
	$(BIN)/nvfabric lab kernel -- $(BIN)/pytest -m kernel -p no:cacheprovider $(DURATIONS) tests/kernel

# The gateway VM image (docs/deploy.md "The gateway VM image"): build/gateway.qcow2 from debootstrap and
# this checkout's wheel, downloads cached in ~/.cache/nvfabric/image (about 2 min cold, 1 min warm).
# test-image boots it under qemu against a reflector, with a NoCloud and with an OpenStack config drive
# (about 70 s each under TCG, plus any wait for another VM's lock).
gateway-image: setup
	deploy/gateway-image/build.sh build/gateway.qcow2

test-image: gateway-image
	$(BIN)/pytest -m image -p no:cacheprovider -rP tests/image

# `make install`: the daemons on this host as the units expect them (docs/deploy.md "Installing on a host"):
# a venv in /opt/nvfabric with this checkout's wheel on Debian's python3 (its dependencies from PyPI),
# /usr/bin/nvfabric pointing into it, the three units, and the sample configurations in /etc/nvfabric, each
# only where no file is (an operator's configuration is never overwritten). Run again to upgrade in place.
# DESTDIR=/some/root stages the same tree under that root (an image, a test); the venv's scripts are
# rewritten to name /opt/nvfabric, where they will run.
INSTALL_PYTHON ?= /usr/bin/python3
UNIT_DIR := /usr/local/lib/systemd/system
OPT := $(DESTDIR)/opt/nvfabric
SAMPLES := rr.yaml agent.yaml gateway.yaml

install: venv
	rm -rf build/wheel && $(BIN)/pip wheel -q --no-deps --disable-pip-version-check -w build/wheel .
	test -x $(OPT)/bin/python || $(INSTALL_PYTHON) -m venv $(OPT)
	$(OPT)/bin/python -m pip install -q --disable-pip-version-check build/wheel/nvfabric-*.whl
	$(OPT)/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps build/wheel/nvfabric-*.whl
	@if [ -n "$(DESTDIR)" ]; then \
		grep -rlI -- "$(OPT)" $(OPT)/bin $(OPT)/pyvenv.cfg | xargs -r sed -i "s|$(OPT)|/opt/nvfabric|g"; fi
	install -d $(DESTDIR)/usr/bin $(DESTDIR)$(UNIT_DIR)
	ln -sfn /opt/nvfabric/bin/nvfabric $(DESTDIR)/usr/bin/nvfabric
	install -m 0644 deploy/systemd/nvfabric-rr.service deploy/systemd/nvfabric-agent.service \
		deploy/systemd/nvfabric-gateway.service $(DESTDIR)$(UNIT_DIR)/
	install -d -m 0755 $(DESTDIR)/etc/nvfabric
	@for f in $(SAMPLES); do \
		if [ -e $(DESTDIR)/etc/nvfabric/$$f ]; then echo "kept $(DESTDIR)/etc/nvfabric/$$f (the sample is deploy/etc/nvfabric/$$f)"; \
		else install -m 0640 deploy/etc/nvfabric/$$f $(DESTDIR)/etc/nvfabric/$$f && echo "installed $(DESTDIR)/etc/nvfabric/$$f"; fi; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "$$(cd / && $(OPT)/bin/python -m nvfabric.cli --version) installed in $(OPT)"

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info build
