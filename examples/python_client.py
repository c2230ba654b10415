#!/usr/bin/env python3
"""A short use of the omniroute Python client (pip install ./clients/python):
pipelines orders on one connection, checks each answer, reads one back,
and exits 0 only if all of them are right.

    python3 examples/python_client.py --port 4433 --ca omniroute-data/cert.pem \
        --token dev-web-token --channel web --sku SKU-1 --orders 200
"""

import argparse
import asyncio
import sys
import time

import omniroute


async def run(args):
    client = await omniroute.connect(args.host, args.port, args.ca, args.token)
    print(f"connected as {client.role}")
    prefix = f"py-{time.time_ns()}-"
    wanted = {i: 1 + i % 3 for i in range(1, args.orders + 1)}
    started = time.perf_counter()
    decisions = await asyncio.gather(*[
        client.submit(args.channel, f"{prefix}{i}", [(args.sku, qty)], ship_to=(50.0, 10.0))
        for i, qty in wanted.items()])
    elapsed = time.perf_counter() - started
    failures = [f"order {i}: {d.reason or d.allocations}" for (i, qty), d in zip(wanted.items(), decisions)
                if not d.routed or sum(a.qty for a in d.allocations) != qty]
    unknown = await client.submit(args.channel, f"{prefix}bad", [("NO-SUCH-SKU", 1)], ship_to=(50.0, 10.0))
    if unknown.routed or unknown.reason != "invalid":
        failures.append(f"an unknown SKU was answered {unknown}")
    order = await client.get_order(args.channel, f"{prefix}1")
    if order.state != "held":
        failures.append(f"order 1 reads back as {order.state}")
    await client.close()
    print(f"{len(decisions) - len(failures)} of {args.orders} orders routed in {elapsed * 1e3:.1f} ms "
          f"({args.orders / elapsed:.0f} orders/s pipelined)")
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
