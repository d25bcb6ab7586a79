"""OSStatus values the double returns, their messages, and the exit status derived from them.

Messages are the comments of ``base/SecBase.h``, which ``SecCopyErrorMessageString`` returns and
``sec_errstr`` prints [Apple SecBase.h]. The exit status is ``main``'s return value, an ``int``
OSStatus, cut to its low byte by ``exit(3)`` [Apple security.c].
"""

from __future__ import annotations

NO_ERR = 0
ERR_PARAM = -50
ERR_USER_CANCELED = -128
ERR_NOT_AVAILABLE = -25291
ERR_AUTH_FAILED = -25293
ERR_NO_SUCH_KEYCHAIN = -25294
ERR_DUPLICATE_ITEM = -25299
ERR_ITEM_NOT_FOUND = -25300
ERR_INVALID_ITEM_REF = -25304
ERR_INTERACTION_NOT_ALLOWED = -25308

_MESSAGES = {
    ERR_PARAM: "One or more parameters passed to a function were not valid.",
    ERR_USER_CANCELED: "User canceled the operation.",
    ERR_NOT_AVAILABLE: "No keychain is available. You may need to restart your computer.",
    ERR_AUTH_FAILED: "The user name or passphrase you entered is not correct.",
    ERR_NO_SUCH_KEYCHAIN: "The specified keychain could not be found.",
    ERR_DUPLICATE_ITEM: "The specified item already exists in the keychain.",
    ERR_ITEM_NOT_FOUND: "The specified item could not be found in the keychain.",
    ERR_INVALID_ITEM_REF: "The specified item is no longer valid. It may have been deleted from "
                          "the keychain.",
    ERR_INTERACTION_NOT_ALLOWED: "User interaction is not allowed.",
}


def errstr(status: int) -> str:
    # Only the codes above are ever produced; the fallback keeps a bug visible, not fatal.
    return _MESSAGES.get(status, f"OSStatus {status}")


def exit_status(result: int) -> int:
    """What the shell sees when ``main`` returns ``result``: 44 for -25300, 255 for -1."""
    return result & 0xFF
