"""usearch, imported so that llama.cpp still loads models afterwards.

usearch loads NumKong with ``RTLD_GLOBAL``, and NumKong's library exports C++
runtime symbols; any library bound lazily after it (llama.cpp's) then resolves
``std::`` symbols to NumKong's copies and fails to load a GGUF vocabulary with
``std::bad_cast``. Loading the system C++ runtime into the global scope first
keeps its symbols ahead of NumKong's for everyone."""

from __future__ import annotations

import contextlib
import ctypes
import sys

if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)

from usearch.index import Index

__all__ = ["Index"]
