"""Test topologies in containerlab format, built from network namespaces (in a VM when the kernel lacks VRF/GRE)."""
