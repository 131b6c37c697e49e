"""Kernel sources, installed as ``fastclr.kernels``.

``triton/`` holds pure @triton.jit kernels, ``cpu/`` the C++ kernels built by CMakeLists.txt.
"""
