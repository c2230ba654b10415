"""Frames of omniroute protocol version 1 (docs/PROTOCOL.md): encoding of
requests, decoding of answers. No I/O here."""

import math
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

ALPN = "omniroute/1"
VERSION = 1
MAX_FRAME_BYTES = 1 << 20

# Request kinds.
HELLO, SUBMIT, CONFIRM, CANCEL, GET_ORDER = 0x01, 0x02, 0x03, 0x04, 0x05
AVAILABILITY, STOCK_SET, STOCK_ADJUST, NODE_REJECT, NODE_SHIP = 0x06, 0x07, 0x08, 0x09, 0x0A
RETURN, SUBSCRIBE, SET_NODE_ONLINE, GET_ORDER_BY_ID = 0x0B, 0x0C, 0x0D, 0x0E
FOLLOW_ORDERS, LIST_ORDERS = 0x0F, 0x10

# Answer kinds.
HELLO_OK, DECISION, ORDER, AVAILABILITY_ANSWER = 0x81, 0x82, 0x83, 0x84
STOCK_RESULT, NODE_ONLINE, SUBSCRIBED, EVENT = 0x85, 0x86, 0x87, 0x88
ORDER_STATUS, ORDER_PAGE, ERROR = 0x89, 0x8A, 0xFF

#: Error codes by number, as PROTOCOL.md names them.
ERROR_NAMES = {
    1: "Malformed", 2: "UnknownKind", 3: "NotAuthenticated", 4: "Forbidden",
    5: "BadToken", 6: "UnsupportedVersion", 7: "Overloaded", 8: "UnknownOrder",
    9: "InvalidState", 10: "UnknownSku", 11: "UnknownNode", 12: "InvalidQuantity",
    13: "CursorTooOld", 14: "TooLarge", 15: "Internal", 16: "Unframeable",
    17: "Archived", 18: "UnknownChannel", 19: "Unavailable", 20: "NotLeader",
}
#: The error of a replica that does not lead its cluster; its message is
#: the leader's client address `host:port`, empty while none is known.
NOT_LEADER = 20
#: Rejection codes of a decision.
REJECT_NAMES = {
    1: "short", 2: "no_eligible_node", 3: "too_many_shipments", 4: "invalid",
    5: "duplicate_mismatch", 6: "contention",
}
#: Order states by wire code.
STATES = {1: "held", 2: "confirmed", 3: "shipped", 4: "cancelled", 5: "expired", 6: "rejected"}
#: What changed for an order, in a status.
CHANGES = {
    1: "routed", 2: "confirmed", 3: "cancelled", 4: "expired", 5: "shipped",
    6: "partly_shipped", 7: "returned", 8: "rerouted_node_rejected",
    9: "rerouted_stock_count", 10: "short", 11: "rerouted_node_offline",
}
METHODS = {"ship": 0, "pickup": 1, "same_day": 2}
#: A safety stock on the wire that leaves the cell's as it is.
SAFETY_UNCHANGED = 0xFFFFFFFF


#: Units one order line, ship or return may carry (the daemon's MAX_QTY_PER_LINE).
MAX_QTY = 1_000_000


class InvalidRequest(ValueError):
    """A request this client will not send: a value outside what the
    protocol carries (PROTOCOL.md), named with its field. Nothing was sent."""


def quantity(qty, what: str) -> bytes:
    """`qty` on the wire, once it is a whole number from 1 to MAX_QTY."""
    if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
        raise InvalidRequest(f"{what}: the quantity must be a whole number from 1 to {MAX_QTY}, not {qty!r}")
    return struct.pack("<I", qty)


def string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise InvalidRequest(f"a text of {len(data)} bytes is longer than the protocol carries")
    return struct.pack("<H", len(data)) + data


def frame(kind: int, request_id: int, payload: bytes) -> bytes:
    return struct.pack("<IBQ", 1 + 8 + len(payload), kind, request_id) + payload


def key(channel: str, client_order_id: str) -> bytes:
    return string(channel) + string(client_order_id)


def order(channel, client_order_id, lines, ship_to, market=None, method="ship",
          pickup_store=None, hold_ttl_ms=None) -> bytes:
    lat, lon = ship_to
    payload = key(channel, client_order_id) + struct.pack("<dd", lat, lon)
    payload += string(market or "") + struct.pack("<B", METHODS[method])
    if method == "pickup":
        payload += string(pickup_store or "")
    payload += struct.pack("<IH", hold_ttl_ms or 0, len(lines))
    for line, (sku, qty) in enumerate(lines):
        payload += string(sku) + quantity(qty, f"line {line} ({sku})")
    return payload


@dataclass
class Allocation:
    line: int
    sku: str
    node: str
    qty: int


@dataclass
class ShortLine:
    line: int
    sku: str
    requested: int
    available: int


@dataclass
class Decision:
    """A submit's answer: routed (order id, allocations) or rejected (why)."""

    routed: bool
    order_id: Optional[int] = None
    expires_at_ms: Optional[int] = None
    allocations: List[Allocation] = field(default_factory=list)
    short: List[ShortLine] = field(default_factory=list)
    code: Optional[int] = None
    reason: Optional[str] = None
    detail: Optional[int] = None
    message: Optional[str] = None


@dataclass
class OrderAllocation:
    line: int
    sku: str
    node: str
    open: int
    shipped: int
    returned: int


@dataclass
class OrderView:
    order_id: int
    channel: str
    client_order_id: str
    state: str
    expires_at_ms: int
    allocations: List[OrderAllocation]
    short: List[ShortLine]
    #: When the order was routed (Unix ms, to the second), on a listing's
    #: page; None elsewhere, or when not recorded.
    created_at_ms: Optional[int] = None


@dataclass
class NodeStock:
    node: str
    atp: int
    distance_km: Optional[float]


@dataclass
class Event:
    """A node's event: units allocated to it or taken back."""

    cursor: int
    kind: str
    order_id: int
    channel: str
    client_order_id: str
    lines: List[Tuple[int, str, int]]


@dataclass
class OrderStatus:
    """One change of one of a channel's orders, with the order as it now is."""

    cursor: int
    change: str
    released_from: List[str]
    order: OrderView


class Reader:
    """Reads the fields of one payload, in order; a short payload raises."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.take("<H")
        text = self.data[self.at:self.at + length].decode("utf-8")
        self.at += length
        return text

    def shorts(self) -> List[ShortLine]:
        return [ShortLine(self.take("<H"), self.string(), self.take("<I"), self.take("<I"))
                for _ in range(self.take("<H"))]

    def order_view(self) -> OrderView:
        order_id, channel, client_order_id = self.take("<Q"), self.string(), self.string()
        state, expires = self.take("<B"), self.take("<Q")
        allocations = [OrderAllocation(self.take("<H"), self.string(), self.string(),
                                       self.take("<I"), self.take("<I"), self.take("<I"))
                       for _ in range(self.take("<H"))]
        return OrderView(order_id, channel, client_order_id, STATES.get(state, str(state)),
                         expires, allocations, self.shorts())


def decision(payload: bytes) -> Decision:
    r = Reader(payload)
    if r.take("<B") == 0:
        order_id, expires = r.take("<Q"), r.take("<Q")
        allocations = [Allocation(r.take("<H"), r.string(), r.string(), r.take("<I"))
                       for _ in range(r.take("<H"))]
        return Decision(True, order_id, expires, allocations, r.shorts())
    code, detail, message = r.take("<H"), r.take("<H"), r.string()
    return Decision(False, short=r.shorts(), code=code, reason=REJECT_NAMES.get(code),
                    detail=detail, message=message)


def order_view(payload: bytes) -> OrderView:
    return Reader(payload).order_view()


def availability(payload: bytes) -> List[NodeStock]:
    r = Reader(payload)
    nodes = []
    for _ in range(r.take("<I")):
        node, atp, distance = r.string(), r.take("<I"), r.take("<d")
        nodes.append(NodeStock(node, atp, None if math.isnan(distance) else distance))
    return nodes


def event(payload: bytes) -> Event:
    r = Reader(payload)
    cursor, kind, order_id = r.take("<Q"), r.take("<B"), r.take("<Q")
    channel, client_order_id = r.string(), r.string()
    lines = [(r.take("<H"), r.string(), r.take("<I")) for _ in range(r.take("<H"))]
    return Event(cursor, {1: "allocated", 2: "released"}.get(kind, str(kind)), order_id,
                 channel, client_order_id, lines)


def order_status(payload: bytes) -> OrderStatus:
    r = Reader(payload)
    cursor, change = r.take("<Q"), r.take("<B")
    released_from = [r.string() for _ in range(r.take("<H"))]
    return OrderStatus(cursor, CHANGES.get(change, str(change)), released_from, r.order_view())


def order_page(payload: bytes) -> Tuple[List[OrderView], int]:
    r = Reader(payload)
    next_after = r.take("<Q")
    orders = []
    for _ in range(r.take("<H")):
        order = r.order_view()
        order.created_at_ms = r.take("<Q") or None
        orders.append(order)
    return orders, next_after
