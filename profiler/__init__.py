"""Timing primitives, link and memory bandwidth, per-layer compute, fingerprint, HardwareProfile."""
