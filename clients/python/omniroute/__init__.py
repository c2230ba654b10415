"""Client for the omniroute order-routing daemon over QUIC (protocol version 1)."""

from .client import Client, ConnectionLost, FeedOpening, ServerError, connect
from .wire import (
    CHANGES,
    STATES,
    Allocation,
    InvalidRequest,
    Decision,
    Event,
    NodeStock,
    OrderAllocation,
    OrderStatus,
    OrderView,
    ShortLine,
)

__all__ = [
    "CHANGES",
    "STATES",
    "Allocation",
    "Client",
    "ConnectionLost",
    "FeedOpening",
    "InvalidRequest",
    "Decision",
    "Event",
    "NodeStock",
    "OrderAllocation",
    "OrderStatus",
    "OrderView",
    "ServerError",
    "ShortLine",
    "connect",
]
