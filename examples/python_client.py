#!/usr/bin/env python3
"""An omniroute client in Python, written from docs/PROTOCOL.md alone.

It connects over QUIC (aioquic), says Hello, pipelines orders on one stream,
matches every answer to its request by id, checks the answers, and exits 0
only if all of them are right.

    pip install aioquic
    python3 examples/python_client.py --port 4433 --ca omniroute-data/cert.pem \
        --token dev-web-token --channel web --sku SKU-1 --orders 200
"""

import argparse
import asyncio
import struct
import sys
import time

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived, StreamReset

ALPN = "omniroute/1"
VERSION = 1

HELLO, SUBMIT, GET_ORDER = 0x01, 0x02, 0x05
HELLO_OK, DECISION, ORDER, ERROR = 0x81, 0x82, 0x83, 0xFF
REJECT_INVALID, INVALID_UNKNOWN_SKU = 4, 4


def string(text):
    data = text.encode("utf-8")
    return struct.pack("<H", len(data)) + data


def frame(kind, request_id, payload):
    return struct.pack("<IBQ", 1 + 8 + len(payload), kind, request_id) + payload


def order_payload(channel, order_id, lat, lon, lines):
    payload = string(channel) + string(order_id) + struct.pack("<dd", lat, lon)
    payload += string("")  # no market
    payload += struct.pack("<B", 0)  # ship
    payload += struct.pack("<I", 0)  # the channel's hold ttl
    payload += struct.pack("<H", len(lines))
    for sku, qty in lines:
        payload += string(sku) + struct.pack("<I", qty)
    return payload


class Reader:
    """Reads the fields of one payload, in order."""

    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self):
        length = self.take("<H")
        text = self.data[self.at:self.at + length].decode("utf-8")
        self.at += length
        return text

    def shorts(self):
        return [(self.take("<H"), self.string(), self.take("<I"), self.take("<I")) for _ in range(self.take("<H"))]


def decode_decision(payload):
    r = Reader(payload)
    if r.take("<B") == 0:
        order_id, expires = r.take("<Q"), r.take("<Q")
        allocations = [(r.take("<H"), r.string(), r.string(), r.take("<I")) for _ in range(r.take("<H"))]
        return {"routed": True, "order_id": order_id, "expires_at_ms": expires, "allocations": allocations, "short": r.shorts()}
    code, detail, message = r.take("<H"), r.take("<H"), r.string()
    return {"routed": False, "code": code, "detail": detail, "message": message, "short": r.shorts()}


class OmnirouteProtocol(QuicConnectionProtocol):
    """Routes every answer frame to the future of its request id."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffers = {}
        self.waiting = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            buffer = self.buffers.setdefault(event.stream_id, bytearray())
            buffer.extend(event.data)
            while len(buffer) >= 4:
                length = struct.unpack_from("<I", buffer, 0)[0]
                if len(buffer) < 4 + length:
                    break
                kind, request_id = struct.unpack_from("<BQ", buffer, 4)
                payload = bytes(buffer[13:4 + length])
                del buffer[:4 + length]
                future = self.waiting.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result((kind, payload))
        elif isinstance(event, StreamReset):
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"stream reset with code {event.error_code:#x}"))

    def send(self, stream_id, kind, request_id, payload):
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        self._quic.send_stream_data(stream_id, frame(kind, request_id, payload), end_stream=False)
        self.transmit()
        return future


async def run(args):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
    configuration.load_verify_locations(args.ca)
    configuration.server_name = "localhost"
    failures = []
    async with connect(args.host, args.port, configuration=configuration, create_protocol=OmnirouteProtocol) as client:
        stream = client._quic.get_next_available_stream_id()
        kind, payload = await client.send(stream, HELLO, 0, struct.pack("<H", VERSION) + string(args.token))
        if kind != HELLO_OK:
            raise SystemExit(f"hello refused: kind {kind:#x} {payload!r}")
        print(f"connected as {Reader(payload).string()}")

        prefix = f"py-{int(time.time() * 1e6)}-"
        wanted = {}
        futures = []
        started = time.perf_counter()
        for i in range(1, args.orders + 1):
            qty = 1 + i % 3
            wanted[i] = qty
            payload = order_payload(args.channel, f"{prefix}{i}", 50.0, 10.0, [(args.sku, qty)])
            futures.append((i, client.send(stream, SUBMIT, i, payload)))
        bad_id = args.orders + 1
        futures.append((bad_id, client.send(stream, SUBMIT, bad_id, order_payload(args.channel, f"{prefix}bad", 50.0, 10.0, [("NO-SUCH-SKU", 1)]))))
        answers = {i: await future for i, future in futures}
        elapsed = time.perf_counter() - started

        routed = 0
        for i, qty in wanted.items():
            kind, payload = answers[i]
            if kind != DECISION:
                failures.append(f"order {i}: answer kind {kind:#x}")
                continue
            decision = decode_decision(payload)
            if not decision["routed"]:
                failures.append(f"order {i}: rejected {decision['message']}")
                continue
            units = sum(a[3] for a in decision["allocations"])
            skus = {a[1] for a in decision["allocations"]}
            if units != qty or skus != {args.sku}:
                failures.append(f"order {i}: allocated {units} of {skus}, wanted {qty} of {args.sku}")
            routed += 1
        kind, payload = answers[bad_id]
        decision = decode_decision(payload) if kind == DECISION else None
        if not decision or decision["routed"] or (decision["code"], decision["detail"]) != (REJECT_INVALID, INVALID_UNKNOWN_SKU):
            failures.append(f"unknown SKU answered {decision}")

        kind, payload = await client.send(stream, GET_ORDER, bad_id + 1, string(args.channel) + string(f"{prefix}1"))
        if kind != ORDER:
            failures.append(f"get order answered kind {kind:#x}")
        else:
            r = Reader(payload)
            order_id, channel, client_id, state = r.take("<Q"), r.string(), r.string(), r.take("<B")
            if (channel, client_id, state) != (args.channel, f"{prefix}1", 1):
                failures.append(f"get order answered {channel}/{client_id} state {state}")

    print(f"{routed} of {args.orders} orders routed in {elapsed * 1e3:.1f} ms ({args.orders / elapsed:.0f} orders/s pipelined)")
    for failure in failures:
        print("FAILED:", failure)
    if failures:
        return 1
    print("python client: ok")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--ca", default="omniroute-data/cert.pem")
    parser.add_argument("--token", default="dev-web-token")
    parser.add_argument("--channel", default="web")
    parser.add_argument("--sku", default="SKU-1")
    parser.add_argument("--orders", type=int, default=200)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
