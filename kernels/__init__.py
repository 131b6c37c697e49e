"""Kernel sources, installed as ``fastclr.kernels``: Triton kernels (``triton/``) and C++ (``cpu/``)."""
