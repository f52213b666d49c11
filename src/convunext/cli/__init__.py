"""The ``convunext`` command line: a thin layer over the library API (one module per sub-command)."""
