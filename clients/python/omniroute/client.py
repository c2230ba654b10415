"""The asyncio client: one QUIC connection, requests pipelined on one
stream and matched to their answers by request id, and a stream of its own
for each feed (a node's events, a channel's order statuses)."""

import asyncio
import contextlib
import struct
from typing import AsyncIterator, Dict, List, Optional, Sequence, Tuple

from aioquic.asyncio import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset

from . import wire

#: Answers a feed may queue before it counts as too slow and ends (resume
#: from its last cursor); the daemon's own bound on a follower is 65 536.
FEED_QUEUE = 65_536
#: The request id of the one request on a feed's stream.
FEED_REQUEST_ID = 1


class ServerError(Exception):
    """The daemon refused a request: `code` and `name` as PROTOCOL.md lists
    them, and its message. Nothing was changed by the request."""

    def __init__(self, code: int, message: str):
        self.code, self.message = code, message
        self.name = wire.ERROR_NAMES.get(code, f"code {code}")
        super().__init__(f"{self.name} ({code}): {message}")


class ConnectionLost(Exception):
    """The connection or a feed's stream ended before the answer came."""


class _Protocol(QuicConnectionProtocol):
    """Hands each answer frame to whoever waits for its (stream, request id)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffers: Dict[int, bytearray] = {}
        self.waiting: Dict[Tuple[int, int], asyncio.Future] = {}
        self.feeds: Dict[int, asyncio.Queue] = {}
        #: Set once the connection has ended: a request sent after that
        #: would never be answered (the cluster client checks it).
        self.terminated = False

    async def wait_connected(self):
        try:
            await super().wait_connected()
        except asyncio.CancelledError:
            # Given up (connect's timeout): the handshake it waited for
            # fails as the connection goes. Take that failure, so asyncio
            # does not print "Future exception was never retrieved".
            waiter = self._connected_waiter
            if waiter is not None:
                waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self._data(event.stream_id, event.data)
            if event.end_stream:
                self._ended(event.stream_id, "the server ended the stream")
        elif isinstance(event, StreamReset):
            self._ended(event.stream_id, f"stream reset with code {event.error_code:#x}")
        elif isinstance(event, ConnectionTerminated):
            self.terminated = True
            for stream_id in list(self.feeds) + [s for s, _ in self.waiting]:
                self._ended(stream_id, f"connection closed: {event.reason_phrase}")

    def _data(self, stream_id: int, data: bytes):
        buffer = self.buffers.setdefault(stream_id, bytearray())
        buffer.extend(data)
        while len(buffer) >= 4:
            length = struct.unpack_from("<I", buffer, 0)[0]
            if len(buffer) < 4 + length:
                break
            kind, request_id = struct.unpack_from("<BQ", buffer, 4)
            payload = bytes(buffer[13:4 + length])
            del buffer[:4 + length]
            feed = self.feeds.get(stream_id)
            if feed is not None:
                if feed.full():
                    self._ended(stream_id, "the feed's reader fell behind")
                    return
                feed.put_nowait((kind, payload))
                continue
            future = self.waiting.pop((stream_id, request_id), None)
            if future is not None and not future.done():
                future.set_result((kind, payload))

    def _ended(self, stream_id: int, why: str):
        for waiting in [k for k in self.waiting if k[0] == stream_id]:
            future = self.waiting.pop(waiting)
            if not future.done():
                future.set_exception(ConnectionLost(why))
        feed = self.feeds.pop(stream_id, None)
        if feed is not None:
            with contextlib.suppress(asyncio.QueueFull):
                feed.put_nowait((None, why.encode()))

    def request(self, stream_id: int, request_id: int, kind: int, payload: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting[(stream_id, request_id)] = future
        self._quic.send_stream_data(stream_id, wire.frame(kind, request_id, payload))
        self.transmit()
        return future

    def open_feed(self, kind: int, payload: bytes) -> Tuple[int, asyncio.Queue]:
        stream_id = self._quic.get_next_available_stream_id()
        queue: asyncio.Queue = asyncio.Queue(maxsize=FEED_QUEUE)
        self.feeds[stream_id] = queue
        self._quic.send_stream_data(stream_id, wire.frame(kind, FEED_REQUEST_ID, payload))
        self.transmit()
        return stream_id, queue

    def close_feed(self, stream_id: int):
        if self.feeds.pop(stream_id, None) is not None:
            with contextlib.suppress(Exception):
                self._quic.send_stream_data(stream_id, b"", end_stream=True)
                self._quic.stop_stream(stream_id, 0)
                self.transmit()


class Feed:
    """A node's events or a channel's statuses, from `next_cursor` on, as
    an async iterator. Ends with `ConnectionLost` when the stream does (the
    daemon drops a follower that falls too far behind: resume from the last
    cursor seen + 1)."""

    def __init__(self, protocol: _Protocol, stream_id: int, queue: asyncio.Queue, item, next_cursor: int):
        self._protocol, self._stream_id, self._queue = protocol, stream_id, queue
        self._item, self.next_cursor = item, next_cursor

    def __aiter__(self):
        return self

    async def __anext__(self):
        kind, payload = await self._queue.get()
        if kind is None:
            raise ConnectionLost(payload.decode())
        if kind == wire.ERROR:
            r = wire.Reader(payload)
            raise ServerError(r.take("<H"), r.string())
        return self._item(payload)

    def close(self):
        """Stops the feed; the connection goes on."""
        self._protocol.close_feed(self._stream_id)


class Client:
    """A connection to the daemon, authenticated with one token."""

    def __init__(self, protocol: _Protocol, stack: contextlib.AsyncExitStack):
        self._protocol, self._stack = protocol, stack
        self._stream = protocol._quic.get_next_available_stream_id()
        self._next_id = 1
        self.role: Optional[str] = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        """Closes the connection (the daemon is told at once)."""
        await self._stack.aclose()

    async def _call(self, kind: int, payload: bytes, answer: int) -> bytes:
        request_id = self._next_id
        self._next_id += 1
        got, body = await self._protocol.request(self._stream, request_id, kind, payload)
        if got == wire.ERROR:
            r = wire.Reader(body)
            raise ServerError(r.take("<H"), r.string())
        if got != answer:
            raise ConnectionLost(f"answer of kind {got:#x} to a request of kind {kind:#x}")
        return body

    async def hello(self, token: str) -> str:
        body = await self._call(wire.HELLO, struct.pack("<H", wire.VERSION) + wire.string(token), wire.HELLO_OK)
        self.role = wire.Reader(body).string()
        return self.role

    async def submit(self, channel: str, client_order_id: str, lines: Sequence[Tuple[str, int]],
                     ship_to: Tuple[float, float], market: Optional[str] = None, method: str = "ship",
                     pickup_store: Optional[str] = None, hold_ttl_ms: Optional[int] = None) -> wire.Decision:
        """Routes an order. A rejection is a Decision with routed False, not an error."""
        payload = wire.order(channel, client_order_id, lines, ship_to, market, method, pickup_store, hold_ttl_ms)
        return wire.decision(await self._call(wire.SUBMIT, payload, wire.DECISION))

    async def _order(self, kind: int, payload: bytes) -> wire.OrderView:
        return wire.order_view(await self._call(kind, payload, wire.ORDER))

    async def confirm(self, channel: str, client_order_id: str) -> wire.OrderView:
        return await self._order(wire.CONFIRM, wire.key(channel, client_order_id))

    async def cancel(self, channel: str, client_order_id: str) -> wire.OrderView:
        return await self._order(wire.CANCEL, wire.key(channel, client_order_id))

    async def get_order(self, channel: str, client_order_id: str) -> wire.OrderView:
        return await self._order(wire.GET_ORDER, wire.key(channel, client_order_id))

    async def get_order_by_id(self, channel: str, order_id: int) -> wire.OrderView:
        return await self._order(wire.GET_ORDER_BY_ID, wire.string(channel) + struct.pack("<Q", order_id))

    async def availability(self, sku: str, near: Optional[Tuple[float, float]] = None,
                           count: int = 5, min_qty: int = 1) -> List[wire.NodeStock]:
        """Every node's units of `sku`, or with `near`, the nearest `count` with `min_qty`."""
        payload = wire.string(sku)
        if near is None:
            payload += struct.pack("<B", 0)
        else:
            payload += struct.pack("<BddHI", 1, near[0], near[1], count, min_qty)
        return wire.availability(await self._call(wire.AVAILABILITY, payload, wire.AVAILABILITY_ANSWER))

    async def _stock(self, kind: int, payload: bytes) -> Tuple[int, int, int]:
        return struct.unpack("<III", await self._call(kind, payload, wire.STOCK_RESULT))

    async def stock_set(self, entries: Sequence[Tuple]) -> Tuple[int, int, int]:
        """Entries (sku, node, on_hand[, safety_stock]): (applied, units re-routed, errors)."""
        payload = struct.pack("<I", len(entries))
        for entry in entries:
            sku, node, on_hand = entry[:3]
            safety = entry[3] if len(entry) > 3 and entry[3] is not None else wire.SAFETY_UNCHANGED
            payload += wire.string(sku) + wire.string(node) + struct.pack("<II", on_hand, safety)
        return await self._stock(wire.STOCK_SET, payload)

    async def stock_adjust(self, entries: Sequence[Tuple[str, str, int]]) -> Tuple[int, int, int]:
        """Entries (sku, node, delta): (applied, units re-routed, errors)."""
        payload = struct.pack("<I", len(entries))
        for sku, node, delta in entries:
            payload += wire.string(sku) + wire.string(node) + struct.pack("<q", delta)
        return await self._stock(wire.STOCK_ADJUST, payload)

    async def node_reject(self, node: str, channel: str, client_order_id: str,
                          counts: Sequence[Tuple[str, int]] = ()) -> wire.OrderView:
        payload = wire.string(node) + wire.key(channel, client_order_id) + struct.pack("<H", len(counts))
        for sku, on_hand in counts:
            payload += wire.string(sku) + struct.pack("<I", on_hand)
        return await self._order(wire.NODE_REJECT, payload)

    async def node_ship(self, node: str, channel: str, client_order_id: str, sku: str, qty: int) -> wire.OrderView:
        payload = wire.string(node) + wire.key(channel, client_order_id) + wire.string(sku) + wire.quantity(qty, "ship")
        return await self._order(wire.NODE_SHIP, payload)

    async def return_units(self, node: str, channel: str, client_order_id: str, sku: str, qty: int) -> wire.OrderView:
        payload = wire.string(node) + wire.key(channel, client_order_id) + wire.string(sku) + wire.quantity(qty, "return")
        return await self._order(wire.RETURN, payload)

    async def set_node_online(self, node: str, online: bool) -> int:
        """Returns how many orders were re-routed (going offline)."""
        body = await self._call(wire.SET_NODE_ONLINE, wire.string(node) + struct.pack("<B", int(online)), wire.NODE_ONLINE)
        return struct.unpack("<I", body)[0]

    async def list_orders(self, channel: str, state: Optional[str] = None, node: Optional[str] = None,
                          after: int = 0, limit: int = 100, created_from_ms: int = 0,
                          created_to_ms: int = 0) -> Tuple[List[wire.OrderView], int]:
        """One page of the channel's orders (routed in [created_from_ms, created_to_ms) when
        given) and the `after` of the next (0: none)."""
        codes = {name: code for code, name in wire.STATES.items()}
        payload = wire.string(channel) + struct.pack("<B", codes[state] if state else 0)
        payload += wire.string(node or "")
        payload += struct.pack("<QQQH", created_from_ms, created_to_ms, after, limit)
        return wire.order_page(await self._call(wire.LIST_ORDERS, payload, wire.ORDER_PAGE))

    async def all_orders(self, channel: str, state: Optional[str] = None, node: Optional[str] = None,
                         limit: int = 100, created_from_ms: int = 0,
                         created_to_ms: int = 0) -> AsyncIterator[wire.OrderView]:
        """Every matching order, a page at a time."""
        after = 0
        while True:
            orders, after = await self.list_orders(channel, state, node, after, limit,
                                                   created_from_ms, created_to_ms)
            for order in orders:
                yield order
            if after == 0:
                return

    async def _feed(self, kind: int, payload: bytes, item) -> Feed:
        stream_id, queue = self._protocol.open_feed(kind, payload)
        got, body = await queue.get()
        if got is None:
            raise ConnectionLost(body.decode())
        if got == wire.ERROR:
            self._protocol.close_feed(stream_id)
            r = wire.Reader(body)
            raise ServerError(r.take("<H"), r.string())
        next_cursor = struct.unpack("<Q", body)[0]
        return Feed(self._protocol, stream_id, queue, item, next_cursor)

    def subscribe(self, node: str, from_cursor: int = 0) -> "FeedOpening":
        """A node's events from `from_cursor` (0: the oldest kept), then live:
        `async for e in client.subscribe(node)`, or `await` it for the Feed."""
        payload = wire.string(node) + struct.pack("<Q", from_cursor)
        return FeedOpening(lambda: self._feed(wire.SUBSCRIBE, payload, wire.event))

    def follow_orders(self, channel: str, from_cursor: int = 0) -> "FeedOpening":
        """Every change of the channel's orders from `from_cursor` (0: the
        oldest kept), then live: `async for s in client.follow_orders(channel)`,
        or `await` it for the Feed (and its `next_cursor`)."""
        payload = wire.string(channel) + struct.pack("<Q", from_cursor)
        return FeedOpening(lambda: self._feed(wire.FOLLOW_ORDERS, payload, wire.order_status))


class FeedOpening:
    """What `subscribe` and `follow_orders` return: `await` it for the Feed
    once the daemon has answered (its `next_cursor` known), or iterate it at
    once with `async for`, which opens the feed at the first step."""

    def __init__(self, opening):
        self._opening, self._feed = opening, None

    def __await__(self):
        return self._opening().__await__()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._feed is None:
            self._feed = await self._opening()
        return await self._feed.__anext__()

    def close(self):
        """Stops the feed, if it was opened."""
        if self._feed is not None:
            self._feed.close()


#: How long `connect` waits for the daemon's handshake and Hello answer.
CONNECT_TIMEOUT_S = 5.0


async def connect(host: str, port: int, ca: str, token: str, server_name: str = "localhost",
                  timeout_s: float = CONNECT_TIMEOUT_S) -> Client:
    """Connects, trusting the certificate (or CA) in the PEM file `ca`, and
    says Hello with `token`. Raises ServerError for a token the daemon does
    not know, and ConnectionLost naming the address when no daemon answers
    within `timeout_s` (nothing listens there, or `ca` is not its
    certificate)."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN])
    configuration.load_verify_locations(ca)
    configuration.server_name = server_name
    return await _open_client(host, port, configuration, ca, token, timeout_s)


async def _open_client(host: str, port: int, configuration: QuicConfiguration, ca: str, token: str,
                      timeout_s: float, check=None) -> Client:
    """`connect` with its QUIC configuration made by the caller: the
    handshake, then `check(protocol, where)` if given (it raises
    ConnectionLost to refuse the peer before the token is sent), then Hello."""
    stack = contextlib.AsyncExitStack()
    where = f"{host}:{port}"
    try:
        protocol = await asyncio.wait_for(
            stack.enter_async_context(
                quic_connect(host, port, configuration=configuration, create_protocol=_Protocol)),
            timeout_s)
    except (asyncio.TimeoutError, ConnectionError) as e:
        await stack.aclose()
        why = str(e) or "no handshake"
        raise ConnectionLost(
            f"no daemon answered at {where} within {timeout_s} s ({why}): is it running there, "
            f"and is {ca} its certificate (the daemon prints its path)?") from None
    client = Client(protocol, stack)
    try:
        if check is not None:
            check(protocol, where)
        await asyncio.wait_for(client.hello(token), timeout_s)
    except asyncio.TimeoutError:
        await stack.aclose()
        raise ConnectionLost(f"the daemon at {where} did not answer Hello within {timeout_s} s") from None
    except BaseException:
        await stack.aclose()
        raise
    return client
