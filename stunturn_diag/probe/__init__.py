"""NAT behaviour diagnosis (RFC 4787 / RFC 5382 / RFC 5780)."""
