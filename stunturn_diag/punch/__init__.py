"""Hole punching: pure auth handshake and strategy decision, UDP/TCP runners, API."""
