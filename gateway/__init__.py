"""The multi-tenant gateway: NVGRE into per-tenant VRFs, NAT, upstream BGP."""
