"""Timing primitives, link and memory bandwidth, per-layer compute, HardwareProfile (the fingerprint and sizes are in pie_core)."""
