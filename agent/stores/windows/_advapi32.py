"""The ctypes binding of advapi32's credential functions (win32 only; see ``credman``).

Structures as wincred.h declares them. Every failure is mapped to ``VaultError`` with the
thread's last error (``use_last_error``: ctypes keeps it safe from other calls in between).
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes

from agent.stores.windows.credman import (
    CRED_PERSIST_LOCAL_MACHINE,
    CRED_TYPE_GENERIC,
    ERROR_NOT_FOUND,
    Item,
    VaultError,
    check_write,
)

assert sys.platform == "win32"  # imported by credman only there; mypy checks it with --platform


class _FILETIME(ctypes.Structure):
    _fields_ = [("dwLowDateTime", wintypes.DWORD), ("dwHighDateTime", wintypes.DWORD)]


class _CREDENTIALW(ctypes.Structure):
    _fields_ = [
        ("Flags", wintypes.DWORD),
        ("Type", wintypes.DWORD),
        ("TargetName", wintypes.LPWSTR),
        ("Comment", wintypes.LPWSTR),
        ("LastWritten", _FILETIME),
        ("CredentialBlobSize", wintypes.DWORD),
        ("CredentialBlob", ctypes.POINTER(ctypes.c_ubyte)),
        ("Persist", wintypes.DWORD),
        ("AttributeCount", wintypes.DWORD),
        ("Attributes", ctypes.c_void_p),
        ("TargetAlias", wintypes.LPWSTR),
        ("UserName", wintypes.LPWSTR),
    ]


_PCRED = ctypes.POINTER(_CREDENTIALW)


def _filetime(ft: _FILETIME) -> int:
    return (int(ft.dwHighDateTime) << 32) | int(ft.dwLowDateTime)


class Advapi32:
    def __init__(self) -> None:
        try:
            dll = ctypes.WinDLL("advapi32", use_last_error=True)
        except OSError as exc:
            raise VaultError("load", "advapi32", exc.errno or 0, "cannot load advapi32") \
                from exc
        self._read = dll.CredReadW
        self._read.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD,
                               ctypes.POINTER(_PCRED)]
        self._read.restype = wintypes.BOOL
        self._write = dll.CredWriteW
        self._write.argtypes = [_PCRED, wintypes.DWORD]
        self._write.restype = wintypes.BOOL
        self._delete = dll.CredDeleteW
        self._delete.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD]
        self._delete.restype = wintypes.BOOL
        self._enum = dll.CredEnumerateW
        self._enum.argtypes = [wintypes.LPCWSTR, wintypes.DWORD,
                               ctypes.POINTER(wintypes.DWORD),
                               ctypes.POINTER(ctypes.POINTER(_PCRED))]
        self._enum.restype = wintypes.BOOL
        self._free = dll.CredFree
        self._free.argtypes = [ctypes.c_void_p]
        self._free.restype = None

    def read(self, target: str) -> bytes | None:
        found = _PCRED()
        if not self._read(target, CRED_TYPE_GENERIC, 0, ctypes.byref(found)):
            code = ctypes.get_last_error()
            if code == ERROR_NOT_FOUND:
                return None
            raise VaultError("read", target, code)
        try:
            cred = found.contents
            size = int(cred.CredentialBlobSize)
            return ctypes.string_at(cred.CredentialBlob, size) if size else b""
        finally:
            self._free(found)

    def write(self, target: str, user: str, blob: bytes) -> None:
        check_write(target, user, blob)
        buffer = (ctypes.c_ubyte * len(blob)).from_buffer_copy(blob)
        cred = _CREDENTIALW()
        cred.Type = CRED_TYPE_GENERIC
        cred.TargetName = target
        cred.UserName = user
        cred.CredentialBlobSize = len(blob)
        cred.CredentialBlob = ctypes.cast(buffer, ctypes.POINTER(ctypes.c_ubyte))
        cred.Persist = CRED_PERSIST_LOCAL_MACHINE
        try:
            if not self._write(ctypes.byref(cred), 0):
                raise VaultError("write", target, ctypes.get_last_error())
        finally:
            ctypes.memset(buffer, 0, len(blob))  # the secret does not linger in our heap

    def delete(self, target: str) -> bool:
        if self._delete(target, CRED_TYPE_GENERIC, 0):
            return True
        code = ctypes.get_last_error()
        if code == ERROR_NOT_FOUND:
            return False
        raise VaultError("delete", target, code)

    def items(self, prefix: str) -> list[Item]:
        count = wintypes.DWORD(0)
        found = ctypes.POINTER(_PCRED)()
        # The filter's '*' must end it; '*' inside a TargetName is taken literally before it.
        if not self._enum(f"{prefix}*", 0, ctypes.byref(count), ctypes.byref(found)):
            code = ctypes.get_last_error()
            if code == ERROR_NOT_FOUND:
                return []
            raise VaultError("enumerate", prefix, code)
        try:
            return [Item(str(found[i].contents.TargetName),
                         _filetime(found[i].contents.LastWritten))
                    for i in range(int(count.value))
                    if int(found[i].contents.Type) == CRED_TYPE_GENERIC]
        finally:
            self._free(found)
