"""Settings: the ``sipswitch.toml`` schema, defaults and validation with file:line errors."""

from sipswitch.config.errors import ConfigError, ConfigIssue
from sipswitch.config.settings import (
    CallSettings,
    DatabaseSettings,
    LogSettings,
    RegistrarSettings,
    Settings,
    SipSettings,
    load_settings,
)

__all__ = [
    "CallSettings",
    "ConfigError",
    "ConfigIssue",
    "DatabaseSettings",
    "LogSettings",
    "RegistrarSettings",
    "Settings",
    "SipSettings",
    "load_settings",
]
