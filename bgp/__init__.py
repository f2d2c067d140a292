"""BGP for nvfabric: sessions on ExaBGP's message codec, EVPN routes for NVGRE, the RIB, the client side."""
