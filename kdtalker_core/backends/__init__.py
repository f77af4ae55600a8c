"""Optional CPU kernels behind feature checks, each with a public-PyTorch fallback.

Every module here wraps one non-public or optional PyTorch facility so that the rest of the library
never calls it directly: :mod:`.mkl_linear` (linear layers with weights packed once by MKL or
oneDNN) and :mod:`.nnpack` (NNPACK convolutions); :mod:`.winograd` (our bf16 Winograd F(2,3)) and
:mod:`.allocator` (glibc malloc settings while rendering) sit beside them, and :mod:`.timing` times
the short probes that choose a kernel per machine.
"""
