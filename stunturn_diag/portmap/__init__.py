"""Port mapping on the gateway: PCP (RFC 6887), NAT-PMP (RFC 6886), UPnP IGD.

Pure codecs (``pcp_codec``, ``natpmp_codec``, ``upnp_codec``), bounded I/O runners
(``client_runner``) and the probe's gateway question (``discover``: :func:`discover`
asks, :func:`assess` judges against the STUN-mapped address).
"""

from .discover import assess, discover

__all__ = ["assess", "discover"]
