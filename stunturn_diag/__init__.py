"""stunturn-diag: NAT behaviour diagnosis and authenticated hole punching.

Library layout (each sub-package has one job):

- ``stunturn_diag.sansio.stun``   sans-IO STUN codec (RFC 8489/5389/5780/3489) and Scapy layers
- ``stunturn_diag.signaling`` HTTP client for the pairing server
- ``stunturn_diag.probe``  NAT behaviour diagnosis (RFC 4787/5382/5780)
- ``stunturn_diag.punch``  UDP/TCP hole punching with an authenticated handshake
- ``stunturn_diag.lab``    NAT topologies in Linux network namespaces
- ``stunturn_diag.cli``    the thin click CLI
"""

__version__ = "0.1.0"
