"""The ``sipswitch`` command line."""
