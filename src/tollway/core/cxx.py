"""The process's C++ runtime, initialized before a native module that carries
its own copy of it.

usearch's extension links its own C++ standard library. If it is loaded
before libstdc++'s global locale has been set up, llama.cpp's later use of
``std::locale`` (loading a model's vocabulary) fails with ``std::bad_cast``
and no model loads in that process. Setting up the classic locale first, in
the system's libstdc++, avoids it: call :func:`prepare` before importing such
a module.
"""

from __future__ import annotations

import ctypes
import os

_done = False


def prepare() -> None:
    global _done
    if _done:
        return
    _done = True
    try:
        lib = ctypes.CDLL("libstdc++.so.6", mode=os.RTLD_GLOBAL)
        classic = lib._ZNSt6locale7classicEv  # std::locale::classic()
    except (OSError, AttributeError):  # not glibc/libstdc++: nothing to prepare
        return
    classic.restype = ctypes.c_void_p
    classic()
