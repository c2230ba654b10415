"""Client for the omniroute order-routing daemon over QUIC (protocol version 1)."""

from .client import Client, ServerError, connect
from .wire import (
    CHANGES,
    STATES,
    Allocation,
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
