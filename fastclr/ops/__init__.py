"""Launchers and torch custom ops for the fused kernels (one module per backend)."""
