"""The command line: the only code that prints or chooses exit codes."""
