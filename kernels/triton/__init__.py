"""Pure @triton.jit kernels (no torch glue): the launchers live in fastclr.ops."""
