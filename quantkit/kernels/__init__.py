"""ggml block codecs, group quantization and the type registry (see registry.py).

Submodules import Numba kernels; import them directly, e.g.
``from quantkit.kernels import registry``.
"""
