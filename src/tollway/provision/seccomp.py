"""The seccomp filter bubblewrap loads into every worker (``bwrap --seccomp``):
no new user namespaces. bwrap's own ``--disable-userns`` needs a user
namespace of bwrap's, which, started as root, would map the app to uid 0 on
the host; so the same rule is this filter instead, as flatpak applies it:
``unshare`` and ``clone`` with ``CLONE_NEWUSER`` fail with EPERM, and
``clone3`` (whose flags sit in memory a filter cannot read) fails with ENOSYS,
so the C library falls back to ``clone``. Everything else is allowed.

The program is classic BPF over ``struct seccomp_data`` (nr at 0, arch at 4,
args[0] at 16: its low 32 bits, where CLONE_NEWUSER is, on little-endian)."""

from __future__ import annotations

import errno
import platform
import struct

CLONE_NEWUSER = 0x10000000
# (audit arch, unshare, clone, clone3) per machine; elsewhere no filter is built
_ARCH = {
    "x86_64": (0xC000003E, 272, 56, 435),
    "aarch64": (0xC00000B7, 97, 220, 435),
}
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO, _KILL = 0x7FFF0000, 0x00050000, 0x80000000


def _op(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter's instructions (``struct sock_filter[]``), or None on a machine it does not know."""
    arch = _ARCH.get(machine or platform.machine())
    if arch is None:
        return None
    audit, unshare, clone, clone3 = arch
    return b"".join([
        _op(_LD_W_ABS, 0, 0, 4),  # 0: arch
        _op(_JEQ_K, 1, 0, audit),  # 1: ours: on to 3
        _op(_RET_K, 0, 0, _KILL),  # 2: another ABI (i386): kill
        _op(_LD_W_ABS, 0, 0, 0),  # 3: nr
        _op(_JGE_K, 0, 1, 0x40000000),  # 4: x32's numbers (__X32_SYSCALL_BIT): kill
        _op(_RET_K, 0, 0, _KILL),  # 5
        _op(_JEQ_K, 3, 0, clone3),  # 6: -> 10
        _op(_JEQ_K, 3, 0, unshare),  # 7: -> 11
        _op(_JEQ_K, 2, 0, clone),  # 8: -> 11
        _op(_RET_K, 0, 0, _ALLOW),  # 9
        _op(_RET_K, 0, 0, _ERRNO | errno.ENOSYS),  # 10: clone3
        _op(_LD_W_ABS, 0, 0, 16),  # 11: args[0], low word (the flags)
        _op(_JSET_K, 0, 1, CLONE_NEWUSER),  # 12
        _op(_RET_K, 0, 0, _ERRNO | errno.EPERM),  # 13
        _op(_RET_K, 0, 0, _ALLOW),  # 14
    ])  # fmt: skip
