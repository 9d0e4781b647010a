"""Persistence: extensions, registrations, CDRs and metadata on SQLite or PostgreSQL."""

from sipswitch.store.bindings import Binding, BindingStore
from sipswitch.store.cdr import DISPOSITIONS, HANGUP_SIDES, CdrRecord, CdrStore
from sipswitch.store.credentials import compute_ha1
from sipswitch.store.database import Database
from sipswitch.store.errors import ExtensionExists, ExtensionNotFound, InvalidExtension, StoreError
from sipswitch.store.extensions import Extension, ExtensionStore, validate_number
from sipswitch.store.meta import MetaStore
from sipswitch.store.seed import generate_password, seed_default_extensions

__all__ = [
    "DISPOSITIONS",
    "HANGUP_SIDES",
    "Binding",
    "BindingStore",
    "CdrRecord",
    "CdrStore",
    "Database",
    "Extension",
    "ExtensionExists",
    "ExtensionNotFound",
    "ExtensionStore",
    "InvalidExtension",
    "MetaStore",
    "StoreError",
    "compute_ha1",
    "generate_password",
    "seed_default_extensions",
    "validate_number",
]
