"""The RFC 3261 transaction layer (with RFC 6026): four state machines, their timers, matching,
CANCEL handling and the layer that ties them to a transport and a TU."""

from .base import (
    MAGIC_COOKIE,
    ClientListener,
    ClientTransaction,
    ServerTransaction,
    State,
    Transaction,
    new_branch,
    new_tag,
    new_via,
)
from .client_invite import ClientInviteTransaction, build_ack, build_cancel
from .client_non_invite import ClientNonInviteTransaction
from .layer import RequestHandler, TransactionLayer
from .matching import response_destination
from .server_invite import ServerInviteTransaction
from .server_non_invite import ServerNonInviteTransaction
from .timers import DEFAULT_TIMERS, TimerSettings

__all__ = [
    "DEFAULT_TIMERS",
    "MAGIC_COOKIE",
    "ClientInviteTransaction",
    "ClientListener",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "RequestHandler",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "State",
    "TimerSettings",
    "Transaction",
    "TransactionLayer",
    "build_ack",
    "build_cancel",
    "new_branch",
    "new_via",
    "new_tag",
    "response_destination",
]
