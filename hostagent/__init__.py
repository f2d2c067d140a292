"""The host agent: one per hypervisor; VM ports in, EVPN routes out, the kernel programmed."""
