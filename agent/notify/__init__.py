"""Telling the user: the alert policy, its glue to the loop, and the channels."""
