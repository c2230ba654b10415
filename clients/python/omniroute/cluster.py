"""A client of a replicated daemon: the requests of `Client`, sent to
whichever replica leads. A replica that does not lead answers `NotLeader`
(code 20) naming the leader's client address (docs/PROTOCOL.md); this client
reconnects there and sends the request again, until a deadline."""

import asyncio
import contextlib
import functools
import ssl
from typing import Callable, List, Optional, Sequence, Tuple, Union

from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from . import wire
from .client import Client, ConnectionLost, FeedOpening, ServerError, _open_client

#: How long one request keeps trying replicas before it raises its last
#: error. An election after a leader dies takes about a second
#: (tests/cluster.rs measures 0.7 s from the kill to the next answer): 10 s
#: outlasts several, and a caller still hears soon of a cluster that is down.
RETRY_DEADLINE_S = 10.0
#: How long one replica may take to finish the handshake and answer Hello
#: before the next address is tried. Loopback or a LAN answers within
#: milliseconds; a killed replica's port stays silent until this runs out.
REPLICA_CONNECT_TIMEOUT_S = 1.0
#: How long an open connection may stay silent about a request before it
#: counts as lost (a replica that died after the handshake).
ANSWER_TIMEOUT_S = 5.0
#: The pause before the next address when no leader is named (an election
#: is under way) or a replica could not be reached or was lost: it spares
#: a cluster that cannot answer yet a stream of attempts.
RETRY_PAUSE_S = 0.05

#: Requests that may be sent again after a connection was lost with the
#: answer unknown: sending them twice decides nothing twice. A Submit is
#: idempotent by client order id, Confirm of a confirmed order returns it,
#: StockSet sets absolute counts, the rest only read. Cancel (a second is
#: refused as InvalidState), StockAdjust (deltas), NodeReject, NodeShip and
#: Return are sent again only when nothing was decided (NotLeader, or no
#: connection could be opened).
RESEND_AFTER_LOSS = {
    "hello", "submit", "confirm", "get_order", "get_order_by_id", "availability",
    "stock_set", "set_node_online", "list_orders",
}


def split_address(address: str) -> Tuple[str, int]:
    """`host:port` (an IPv6 host in brackets, as the daemon writes it) as
    (host, port). Raises ValueError for anything else."""
    host, colon, port = address.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"replica address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def load_trust(ca: str) -> List[bytes]:
    """Each certificate in the PEM file `ca`, as PEM of its own. Raises
    ValueError when the file holds none."""
    with open(ca, "rb") as file:
        text = file.read()
    try:
        certificates = x509.load_pem_x509_certificates(text)
    except ValueError as e:
        raise ValueError(f"{ca} holds no PEM certificate ({e})") from None
    return [c.public_bytes(Encoding.PEM) for c in certificates]


def trusted_by_one(trust: List[bytes], ca: str, server_name: str) -> Callable:
    """A check of a handshake's peer: its certificate and chain must verify,
    for `server_name`, against one certificate of `trust` on its own.

    One store holding them all does not do: the daemon's self-signed
    certificates all have the same subject, and OpenSSL verifies a peer
    against the first of them with that subject, failing the others with
    "self-signed certificate". So the handshake runs unverified (aioquic
    still checks that the peer holds the certificate's key) and this runs
    aioquic's own verification once per trusted certificate, before the
    token is sent."""

    def check(protocol, where: str):
        context = protocol._quic.tls
        peer = getattr(context, "_peer_certificate", None)
        if peer is None:
            raise ConnectionLost(f"the replica at {where} presented no certificate")
        why = ""
        for pem in trust:
            try:
                tls.verify_certificate(certificate=peer, chain=context._peer_certificate_chain,
                                       server_name=server_name, cadata=pem)
                return
            except tls.Alert as refused:
                why = str(refused) or type(refused).__name__
        raise ConnectionLost(
            f"the replica at {where} presented a certificate that none of the {len(trust)} in {ca} "
            f"vouches for ({why})")

    return check


async def connect_replica(host: str, port: int, ca: str, token: str, server_name: str = "localhost",
                          timeout_s: float = REPLICA_CONNECT_TIMEOUT_S,
                          trust: Optional[List[bytes]] = None) -> Client:
    """A plain Client of one replica, as `connect` makes, trusting any one
    certificate in the PEM file `ca` (`trust`: those certificates, already
    read with load_trust)."""
    trust = trust if trust is not None else load_trust(ca)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN])
    configuration.verify_mode = ssl.CERT_NONE
    configuration.server_name = server_name
    return await _open_client(host, port, configuration, ca, token, timeout_s,
                              check=trusted_by_one(trust, ca, server_name))


def _address_list(addresses: Union[str, Sequence[str]]) -> List[str]:
    """The replicas' addresses from a list or a comma-separated string,
    each checked to be host:port."""
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    listed = [a.strip() for a in addresses if a.strip()]
    if not listed:
        raise ValueError("connect_cluster needs at least one replica address host:port")
    for address in listed:
        split_address(address)
    return listed


def _retried(name: str):
    """Client's method `name` on the connection to the leader, sent again
    as ClusterClient says."""
    method = getattr(Client, name)

    @functools.wraps(method)
    async def retried(self, *args, **kwargs):
        return await self._call(lambda client: getattr(client, name)(*args, **kwargs),
                                name in RESEND_AFTER_LOSS)

    return retried


async def _opened(opening: FeedOpening):
    return await opening


class ClusterClient:
    """The methods of `Client`, on one connection at a time to a replica of
    a cluster, moved to the leader as the replicas say. A request answered
    `NotLeader` is sent again to the address it names (none named: to the
    next address after RETRY_PAUSE_S); one whose replica cannot be reached
    within `connect_timeout_s` goes to the next address. A request whose
    connection is lost (or stays silent `answer_timeout_s`) before its
    answer is sent again only if RESEND_AFTER_LOSS lists it; else that
    ConnectionLost is raised at once, saying the request may have been
    decided. Each request tries for at most `deadline_s`, then raises its
    last error (`ServerError` NotLeader, or `ConnectionLost`). Any other
    refusal is raised as `Client` raises it.

    A feed (`subscribe`, `follow_orders`) is opened on the leader and ends
    with ConnectionLost when its connection does (the leader stepped down
    or died): open it again from the last cursor + 1."""

    def __init__(self, addresses: List[str], ca: str, token: str, server_name: str,
                 deadline_s: float, connect_timeout_s: float, answer_timeout_s: float):
        if min(deadline_s, connect_timeout_s, answer_timeout_s) <= 0:
            raise ValueError("deadline_s, connect_timeout_s and answer_timeout_s must be above 0")
        #: The replicas to try, in order, when no leader is named.
        self.addresses = addresses
        self._ca, self._token, self._server_name = ca, token, server_name
        #: Each certificate of `ca`: a replica is trusted when one vouches for it.
        self._trust = load_trust(ca)
        self.deadline_s = deadline_s
        self.connect_timeout_s = connect_timeout_s
        self.answer_timeout_s = answer_timeout_s
        #: The address of the open connection, or of the one to open next.
        self.address = addresses[0]
        #: The open connection; None until one is needed again.
        self._client: Optional[Client] = None
        #: One connection is opened or left at a time; concurrent requests
        #: that meet the same NotLeader move the client once.
        self._lock = asyncio.Lock()
        #: Connections being closed in the background, awaited by close().
        self._closing: set = set()
        #: The role the token has, as the last Hello answered.
        self.role: Optional[str] = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        """Closes the connection and waits for those left earlier to close."""
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            self._retire(client)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    def _next_address(self, address: str) -> str:
        """The address after `address` in the list (the first after one not in it)."""
        if address not in self.addresses:
            return self.addresses[0]
        return self.addresses[(self.addresses.index(address) + 1) % len(self.addresses)]

    def _retire(self, client: Client):
        """Closes `client` in the background, at most connect_timeout_s long
        (the peer of a lost connection never acknowledges the close)."""

        async def close_quietly():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self.connect_timeout_s)

        task = asyncio.ensure_future(close_quietly())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _open(self, remaining_s: float) -> Tuple[Client, str]:
        """The open connection and its address, or a new one to `address`. Raises
        ConnectionLost (nothing sent) when it cannot be had in time; the
        next attempt goes to the next address."""
        try:
            await asyncio.wait_for(self._lock.acquire(), max(remaining_s, 0))
        except asyncio.TimeoutError:
            raise ConnectionLost(f"no connection to the cluster was free within {self.deadline_s} s") from None
        try:
            client = self._client
            if client is not None and not client._protocol.terminated:
                return client, self.address
            if client is not None:
                self._client = None
                self._retire(client)
            host, port = split_address(self.address)
            timeout_s = min(self.connect_timeout_s, max(remaining_s, 0.001))
            try:
                client = await connect_replica(host, port, self._ca, self._token, self._server_name,
                                               timeout_s, self._trust)
            except ConnectionLost:
                self.address = self._next_address(self.address)
                raise
            self._client, self.role = client, client.role
            return client, self.address
        finally:
            self._lock.release()

    async def _leave(self, client: Client, leader: str):
        """Leaves `client`'s replica for `leader` (empty: for the next
        address), unless another request has moved the client already."""
        async with self._lock:
            if self._client is not client:
                return
            self._client = None
            self._retire(client)
            try:
                split_address(leader)
            except ValueError:
                leader = ""
            self.address = leader if leader and leader != self.address else self._next_address(self.address)

    async def hello(self, token: str) -> str:
        """Says Hello with `token` on the connection, and on every later one."""
        self._token = token
        self.role = await self._call(lambda client: client.hello(token), True)
        return self.role

    async def _call(self, call, resend_after_loss: bool):
        """`call(client)` on the leader's connection, tried again as the
        class says until `deadline_s` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        last: Optional[Exception] = None
        while True:
            remaining = deadline - loop.time()
            if last is not None and remaining <= 0:
                raise last
            try:
                client, address = await self._open(remaining)
            except ConnectionLost as unreachable:
                last = unreachable
                await asyncio.sleep(min(RETRY_PAUSE_S, max(deadline - loop.time(), 0)))
                continue
            try:
                answer_s = max(min(self.answer_timeout_s, deadline - loop.time()), 0.001)
                return await asyncio.wait_for(call(client), answer_s)
            except ServerError as refused:
                if refused.code != wire.NOT_LEADER:
                    raise
                last = refused
                await self._leave(client, refused.message)
                if refused.message:
                    continue
            except (ConnectionLost, asyncio.TimeoutError) as lost:
                if isinstance(lost, asyncio.TimeoutError):
                    if answer_s < self.answer_timeout_s:
                        # The deadline ran out, not the replica's time: its
                        # connection may be well, and stays.
                        raise ConnectionLost(
                            f"no answer from the replica at {address} within the deadline of "
                            f"{self.deadline_s} s; the request may have been decided there") from None
                    lost = ConnectionLost(f"no answer from the replica at {address} within {answer_s:.3g} s")
                await self._leave(client, "")
                if not resend_after_loss:
                    raise ConnectionLost(
                        f"{lost}; the request may have been decided there, so it was not sent again") from None
                last = lost
            await asyncio.sleep(min(RETRY_PAUSE_S, max(deadline - loop.time(), 0)))

    submit = _retried("submit")
    confirm = _retried("confirm")
    cancel = _retried("cancel")
    get_order = _retried("get_order")
    get_order_by_id = _retried("get_order_by_id")
    availability = _retried("availability")
    stock_set = _retried("stock_set")
    stock_adjust = _retried("stock_adjust")
    node_reject = _retried("node_reject")
    node_ship = _retried("node_ship")
    return_units = _retried("return_units")
    set_node_online = _retried("set_node_online")
    list_orders = _retried("list_orders")
    # Pages through self.list_orders: each page is a request of its own.
    all_orders = Client.all_orders

    def subscribe(self, node: str, from_cursor: int = 0) -> FeedOpening:
        """As Client.subscribe, opened on the leader."""
        return FeedOpening(lambda: self._call(lambda c: _opened(c.subscribe(node, from_cursor)), True))

    def follow_orders(self, channel: str, from_cursor: int = 0) -> FeedOpening:
        """As Client.follow_orders, opened on the leader."""
        return FeedOpening(lambda: self._call(lambda c: _opened(c.follow_orders(channel, from_cursor)), True))


async def connect_cluster(addresses: Union[str, Sequence[str]], ca: str, token: str,
                          server_name: str = "localhost", deadline_s: float = RETRY_DEADLINE_S,
                          connect_timeout_s: float = REPLICA_CONNECT_TIMEOUT_S,
                          answer_timeout_s: float = ANSWER_TIMEOUT_S) -> ClusterClient:
    """A ClusterClient of the replicas at `addresses` (a list of `host:port`,
    or one string of them separated by commas), trusting the certificates
    in the PEM file `ca` (one per replica, one after another, or the CA
    that signed them), connected with `token` to the first replica that
    answers. Raises ServerError for a token the daemon does not know, and
    ConnectionLost when no replica answered within `deadline_s`."""
    client = ClusterClient(_address_list(addresses), ca, token, server_name,
                           deadline_s, connect_timeout_s, answer_timeout_s)

    async def connected(_client: Client) -> None:
        return None

    try:
        await client._call(connected, True)
    except BaseException:
        await client.close()
        raise
    return client
