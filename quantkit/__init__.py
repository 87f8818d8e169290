"""quantkit: calibrated low-bit quantization for Gemma 4 and Gemma 3."""

__version__ = "0.1.0"
