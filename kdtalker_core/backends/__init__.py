"""Optional CPU kernels behind feature checks, each with a public-PyTorch fallback.

Every module here wraps one non-public or optional PyTorch facility so that the rest of the library
never calls it directly: :mod:`.mkl_linear` (MKL pre-packed float32 linear layers) and
:mod:`.nnpack` (NNPACK convolutions).
"""
