"""What a tenant VM gets from its host, answered by the agent from the port model (OVN's way, no process per
routing domain): DHCPv4, router advertisements and DHCPv6, and the virtual addresses a port may claim.

- frames.py: the Ethernet/ARP/IPv4/IPv6/UDP/ICMPv6 framing every answer shares (pure, strict parsing);
- offer.py: what one port is offered (`PortService`), derived from the catalog and the host (pure);
- dhcp4.py, ra.py, dhcp6.py: each protocol as a pure function from a request frame and a PortService to the
  reply frames; vip.py: which frames claim a virtual address;
- wire.py: the one AF_PACKET socket of the agent's namespace (a classic BPF filter keeps only these
  protocols), and responder.py, which dispatches a received frame to its protocol and sends the replies.
"""
