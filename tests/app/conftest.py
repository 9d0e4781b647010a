"""The in-process server fixture of the PBX tests, shared with the application tests."""

from tests.pbx.conftest import lab

__all__ = ["lab"]
