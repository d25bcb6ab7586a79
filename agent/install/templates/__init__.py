"""The login-item templates, shipped as package data (identical copies live in ``packaging/``).

They are ``string.Template`` files: ``${name}`` is filled in by ``agent.install.installer``;
a literal dollar sign would be written ``$$``.
"""
