# Type stub of the C extension services/compressor/_jpegdct.c (DCT-domain JPEG re-quantisation).

class NotEligible(Exception):
    """The JPEG is one the DCT-domain path does not take; the pixel path will."""

class JpegError(Exception):
    """libjpeg found the data corrupt."""

def requantize(data: bytes, quality: int, max_pixels: int, libjpeg_huffman: bool = False) -> bytes: ...

# the libjpeg-turbo version the module was built against (e.g. 3000004), 0 for another libjpeg; part of the
# output cache's policy fingerprint (services/compressor/output_cache.py)
LIBJPEG_TURBO_VERSION_NUMBER: int
