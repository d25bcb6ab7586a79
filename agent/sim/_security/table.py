"""The command table of ``security.c``: names, one-line help, usage texts, matching.

Data taken from Apple's table [Apple security.c]: a name is matched by **prefix of what was typed**
(``strncmp(name, typed, strlen(typed))``), first match in table order, so ``find-generic`` runs
``find-generic-password`` and an empty word runs ``help``. Builds of macOS leave out
``recode-keychain`` (debug only) and ``create-csr`` (``#if 0``); ``filevault`` is on arm64 only.
"""

from __future__ import annotations

COMMANDS: tuple[tuple[str, str, bool], ...] = (
    ('help', 'Show all commands, or show usage for a command.', False),
    ('list-keychains', 'Display or manipulate the keychain search list.', False),
    ('list-smartcards', 'Display available smartcards.', False),
    ('default-keychain', 'Display or set the default keychain.', False),
    ('login-keychain', 'Display or set the login keychain.', False),
    ('create-keychain', 'Create keychains and add them to the search list.', False),
    ('delete-keychain', 'Delete keychains and remove them from the search list.', False),
    ('lock-keychain', 'Lock the specified keychain.', False),
    ('unlock-keychain', 'Unlock the specified keychain.', False),
    ('set-keychain-settings', 'Set settings for a keychain.', False),
    ('set-keychain-password', 'Set password for a keychain.', False),
    ('show-keychain-info', 'Show the settings for keychain.', False),
    ('dump-keychain', 'Dump the contents of one or more keychains.', False),
    ('create-keypair', 'Create an asymmetric key pair.', False),
    ('create-key-loop', 'Create a symmetric key and destroy it, in a loop.', True),
    ('wait-for-notifications', 'Call SecKeychainAddCallback() and then run the runloop.', True),
    ('add-generic-password', 'Add a generic password item.', False),
    ('add-internet-password', 'Add an internet password item.', False),
    ('add-certificates', 'Add certificates to a keychain.', False),
    ('find-generic-password', 'Find a generic password item.', False),
    ('delete-generic-password', 'Delete a generic password item.', False),
    ('set-generic-password-partition-list',
     'Set the partition list of a generic password item.', False),
    ('find-internet-password', 'Find an internet password item.', False),
    ('delete-internet-password', 'Delete an internet password item.', False),
    ('set-internet-password-partition-list',
     'Set the partition list of a internet password item.', False),
    ('find-key', 'Find keys in the keychain', False),
    ('set-key-partition-list', 'Set the partition list of a key.', False),
    ('find-certificate', 'Find a certificate item.', False),
    ('find-identity', 'Find an identity (certificate + private key).', False),
    ('delete-certificate', 'Delete a certificate from a keychain.', False),
    ('delete-identity', 'Delete an identity (certificate + private key) from a keychain.', False),
    ('set-identity-preference', 'Set the preferred identity to use for a service.', False),
    ('get-identity-preference', 'Get the preferred identity to use for a service.', False),
    ('create-db', 'Create a db using the DL.', False),
    ('export', 'Export items from a keychain.', False),
    ('import', 'Import items into a keychain.', False),
    ('export-smartcard', 'Export items from a smartcard.', False),
    ('cms', 'Encode or decode CMS messages.', False),
    ('install-mds', 'Install (or re-install) the MDS database.', False),
    ('add-trusted-cert', 'Add trusted certificate(s).', False),
    ('remove-trusted-cert', 'Remove trusted certificate(s).', False),
    ('dump-trust-settings', 'Display contents of trust settings.', False),
    ('user-trust-settings-enable', 'Display or manipulate user-level trust settings.', False),
    ('trust-settings-export', 'Export trust settings.', False),
    ('trust-settings-import', 'Import trust settings.', False),
    ('verify-cert', 'Verify certificate(s).', False),
    ('authorize', 'Perform authorization operations.', False),
    ('authorizationdb', 'Make changes to the authorization policy database.', False),
    ('execute-with-privileges', 'Execute tool with privileges.', False),
    ('leaks', 'Run /usr/bin/leaks on this process.', False),
    ('error', 'Display a descriptive message for the given error code(s).', False),
    ('create-filevaultmaster-keychain',
     'Create a keychain containing a key pair for FileVault recovery use.', False),
    ('smartcards', 'Enable, disable or list disabled smartcard tokens.', False),
    ('translocate-policy-check', 'Check whether a path would be translocated.', False),
    ('translocate-status-check', 'Check whether a path is translocated.', False),
    ('translocate-original-path', 'Find the original path for a translocated path.', False),
    ('requirement-evaluate', 'Evaluate a requirement against a cert chain.', False),
    ('filevault', 'Handles FileVault specific settings and overrides.', False),
    ('platformsso', 'Handles Platform SSO specific settings and overrides.', False),
)

USAGES: dict[str, str] = {
    'help': (
        '[command ...]'
    ),
    'list-keychains': (
        '[-h] [-d user|system|common|dynamic] [-s [keychain...]]\n'
        '    -d  Use the specified preference domain\n'
        '    -s  Set the search list to the specified keychains\n'
        'With no parameters, display the search list.'
    ),
    'default-keychain': (
        '[-h] [-d user|system|common|dynamic] [-s [keychain]]\n'
        '    -d  Use the specified preference domain\n'
        '    -s  Set the default keychain to the specified keychain\n'
        'With no parameters, display the default keychain.'
    ),
    'login-keychain': (
        '[-h] [-d user|system|common|dynamic] [-s [keychain]]\n'
        '    -d  Use the specified preference domain\n'
        '    -s  Set the login keychain to the specified keychain\n'
        'With no parameters, display the login keychain.'
    ),
    'lock-keychain': (
        '[-h] [-a|keychain]\n'
        '    -a  Lock all keychains'
    ),
    'unlock-keychain': (
        '[-hu] [-p password] [keychain]\n'
        '    -p  Use "password" as the password to unlock the keychain\n'
        '    -u  Do not use the password\n'
        'Use of the -p option is insecure'
    ),
    'show-keychain-info': (
        '[keychain]'
    ),
    'dump-keychain': (
        '[-adhir] [keychain...]\n'
        '    -a  Dump access control list of items\n'
        '    -d  Dump (decrypted) data of items\n'
        '    -i  Interactive access control list editing mode\n'
        '    -r  Dump the raw (encrypted) data of items'
    ),
    'add-generic-password': (
        '[-h] [-a account] [-s service] [-w password] [options...] [-A|-T appPath] [keychain]\n'
        '    -a  Specify account name (required)\n'
        '    -c  Specify item creator (optional four-character code)\n'
        '    -C  Specify item type (optional four-character code)\n'
        '    -D  Specify kind (default is "application password")\n'
        '    -G  Specify generic attribute (optional)\n'
        '    -j  Specify comment string (optional)\n'
        '    -l  Specify label (if omitted, service name is used as default label)\n'
        '    -s  Specify service name (required)\n'
        '    -p  Specify password to be added (legacy option, equivalent to -w)\n'
        '    -w  Specify password to be added\n'
        '    -X  Specify password data to be added as a hexadecimal string\n'
        '    -A  Allow any application to access this item without warning (insecure, not'
        ' recommended!)\n'
        '    -T  Specify an application which may access this item (multiple -T options are'
        ' allowed)\n'
        '    -U  Update item if it already exists (if omitted, the item cannot already exist)\n'
        '\n'
        'By default, the application which creates an item is trusted to access its data without'
        ' warning.\n'
        'You can remove this default access by explicitly specifying an empty app pathname: -T'
        ' ""\n'
        'If no keychain is specified, the password is added to the default keychain.\n'
        'Use of the -p or -w options is insecure. Specify -w as the last option to be prompted.'
        '\n'
    ),
    'find-generic-password': (
        '[-h] [-a account] [-s service] [options...] [-g] [keychain...]\n'
        '    -a  Match "account" string\n'
        '    -c  Match "creator" (four-character code)\n'
        '    -C  Match "type" (four-character code)\n'
        '    -D  Match "kind" string\n'
        '    -G  Match "value" string (generic attribute)\n'
        '    -j  Match "comment" string\n'
        '    -l  Match "label" string\n'
        '    -s  Match "service" string\n'
        '    -g  Display the password for the item found\n'
        '    -w  Display only the password on stdout\n'
        'If no keychains are specified to search, the default search list is used.'
    ),
    'delete-generic-password': (
        '[-h] [-a account] [-s service] [options...] [keychain...]\n'
        '    -a  Match "account" string\n'
        '    -c  Match "creator" (four-character code)\n'
        '    -C  Match "type" (four-character code)\n'
        '    -D  Match "kind" string\n'
        '    -G  Match "value" string (generic attribute)\n'
        '    -j  Match "comment" string\n'
        '    -l  Match "label" string\n'
        '    -s  Match "service" string\n'
        'If no keychains are specified to search, the default search list is used.'
    ),
    'set-generic-password-partition-list': (
        '[-a account] [-s service] [-S partition-list] [-k password] [options...] [keychain]\n'
        '    -a  Match "account" string\n'
        '    -c  Match "creator" (four-character code)\n'
        '    -C  Match "type" (four-character code)\n'
        '    -D  Match "kind" string\n'
        '    -G  Match "value" string (generic attribute)\n'
        '    -j  Match "comment" string\n'
        '    -l  Match "label" string\n'
        '    -s  Match "service" string\n'
        '    -S  Comma-separated list of allowed partition IDs\n'
        '    -k  The password for the keychain (required)\n'
        'If no keychains are specified to search, the default search list is used.\n'
        'Use of the -k option is insecure. Omit it to be prompted.\n'
    ),
    'error': (
        '[error-code...]\n'
        'Display an error string for the given security-related error code.\n'
        'The error can be in decimal or hex, e.g. 1234 or 0x1234. Multiple errors can be'
        ' separated by spaces.'
    ),
}

# getopt strings, for recording command lines without their secrets: the letters that carry a
# password, and the option string the command parses with [Apple keychain_*.c].
SECRET_OPTIONS: dict[str, tuple[str, str]] = {
    "add-generic-password": (":a:c:C:D:G:j:l:s:p:w:X:UAT:h", "pwX"),
    "add-internet-password": (":a:c:C:d:D:j:l:p:P:r:s:t:w:X:UAT:h", "wX"),
    "set-generic-password-partition-list": (":a:c:C:D:G:j:l:s:S:k:", "k"),
    "set-internet-password-partition-list": ("a:c:C:d:D:j:l:p:P:r:s:S:t:k:", "k"),
    "set-key-partition-list": (":a:c:dD:ej:k:l:rsS:t:uvw", "k"),
    "unlock-keychain": ("hp:u", "p"),
    "create-keychain": ("hp:P", "p"),
    "set-keychain-password": ("ho:p:", "op"),
}


def match_command(typed: str) -> str | None:
    """The command ``typed`` selects, or None (``unknown command``)."""
    for name, _help, internal in COMMANDS:
        if not internal and name.startswith(typed):
            return name
    return None


def help_line(name: str) -> str:
    return next(text for command, text, _internal in COMMANDS if command == name)
