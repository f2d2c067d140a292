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
# which the tests run over every daemon's /metrics and the sample alert rules.
APT_PACKAGES := iproute2 iputils-ping nftables tcpdump procps kmod bc frr gobgpd iperf3 \
	qemu-system-x86 linux-image-amd64 busybox-static squashfs-tools \
	udhcpc isc-dhcp-client dhcpcd-base ndisc6 keepalived dnsmasq-base conntrack conntrackd prometheus

.PHONY: setup system venv demo test test-host test-kernel bench clean

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
# VM boot when this kernel lacks VRF/GRE (`nvfabric lab kernel` decides).
test: setup
	$(BIN)/pytest -m "not kernel" tests
	$(BIN)/nvfabric lab kernel -- $(BIN)/pytest -m kernel -p no:cacheprovider tests/kernel

test-host: setup
	$(BIN)/pytest -m "not kernel" tests

test-kernel: setup
	$(BIN)/nvfabric lab kernel -- $(BIN)/pytest -m kernel -p no:cacheprovider tests/kernel

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
