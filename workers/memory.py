"""Process memory settings shared by the worker and its reader processes."""
from __future__ import annotations

# glibc's malloc hands blocks over ~128 kB back to the kernel when freed, and every new one
# comes back as fresh pages, each zeroed on its first touch: a batch's tensors of a few MB
# then cost more in page faults than in arithmetic (measured: 15-20 % of AstroNN's
# throughput). Blocks up to 32 MB (glibc's ceiling) stay in the heap for reuse instead.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BLOCKS_UP_TO = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed blocks of up to 32 MB instead of unmapping them (once per process).

    Returns True when the setting took (glibc), False elsewhere (another libc: nothing changes).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The trim threshold first: glibc keeps at most this much free memory at the heap's top.
    return bool(mallopt(_M_TRIM_THRESHOLD, 4 * _KEEP_BLOCKS_UP_TO) and mallopt(_M_MMAP_THRESHOLD, _KEEP_BLOCKS_UP_TO))
