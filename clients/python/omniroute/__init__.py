"""Client for the omniroute order-routing daemon over QUIC (protocol version 1)."""

from .client import Client, ConnectionLost, FeedOpening, ServerError, connect
from .cluster import (
    ANSWER_TIMEOUT_S,
    REPLICA_CONNECT_TIMEOUT_S,
    RETRY_DEADLINE_S,
    RETRY_PAUSE_S,
    ClusterClient,
    connect_cluster,
    connect_replica,
)
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
    "ANSWER_TIMEOUT_S",
    "CHANGES",
    "STATES",
    "Allocation",
    "Client",
    "ClusterClient",
    "ConnectionLost",
    "FeedOpening",
    "InvalidRequest",
    "Decision",
    "Event",
    "NodeStock",
    "OrderAllocation",
    "OrderStatus",
    "OrderView",
    "REPLICA_CONNECT_TIMEOUT_S",
    "RETRY_DEADLINE_S",
    "RETRY_PAUSE_S",
    "ServerError",
    "ShortLine",
    "connect",
    "connect_cluster",
    "connect_replica",
]
