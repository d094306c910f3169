"""mpq: mixed-precision quantization with EAGL and ALPS layer selection."""
from .bitconfig import load_bits, save_bits
from .quantized import calibrate, candidate_layers, get_bits, quantize, set_bits

__all__ = ["quantize", "set_bits", "get_bits", "candidate_layers", "calibrate", "load_bits", "save_bits"]
__version__ = "0.1.0"
