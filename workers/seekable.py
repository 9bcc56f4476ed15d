"""A read-only, seekable raw stream that keeps its own position: the base of specq's file-like readers.

A subclass gives :meth:`SeekableReader.size` and ``readinto`` (reading from ``self._position``
and moving it); this class answers the rest of what ``io`` and its users (astropy, zipfile,
torch.load) ask of a seekable file.
"""
from __future__ import annotations

import io


class SeekableReader(io.RawIOBase):
    """A read-only, seekable raw stream; ``self._position`` is where the next read starts."""

    def __init__(self) -> None:
        super().__init__()
        self._position = 0

    def size(self) -> int:
        """Bytes in the stream (``seek(0, io.SEEK_END)`` lands there)."""
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size()}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position
