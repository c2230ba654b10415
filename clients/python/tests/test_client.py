"""The Python client against a live daemon: the Rust test
tests/python_client.rs starts one on the test network (channels web and c,
SKU-1 at WH-N) and runs these with its address, certificate and tokens in
OMNIROUTE_* variables."""

import asyncio
import os
import time
import unittest

import omniroute

PORT = int(os.environ.get("OMNIROUTE_PORT", "4433"))
CA = os.environ.get("OMNIROUTE_CA", "omniroute-data/cert.pem")
ADMIN = os.environ.get("OMNIROUTE_ADMIN_TOKEN", "dev-admin-token")
WEB = os.environ.get("OMNIROUTE_WEB_TOKEN", "dev-web-token")
C = os.environ.get("OMNIROUTE_C_TOKEN", "")
NEAR = (50.0, 10.0)


def unique(prefix):
    return f"{prefix}-{time.time_ns()}"


class ClientTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.admin = await omniroute.connect("127.0.0.1", PORT, CA, ADMIN)
        self.web = await omniroute.connect("127.0.0.1", PORT, CA, WEB)

    async def asyncTearDown(self):
        await self.admin.close()
        await self.web.close()

    async def test_pipelined_submits_are_each_answered(self):
        # Proves concurrent submits on one stream each get their own decision, and GetOrder reads one back.
        prefix = unique("pipe")
        decisions = await asyncio.gather(*[
            self.web.submit("web", f"{prefix}-{i}", [("SKU-1", 1 + i % 3)], ship_to=NEAR)
            for i in range(60)])
        self.assertTrue(all(d.routed for d in decisions))
        self.assertEqual([sum(a.qty for a in d.allocations) for d in decisions], [1 + i % 3 for i in range(60)])
        self.assertEqual(len({d.order_id for d in decisions}), 60)
        order = await self.web.get_order("web", f"{prefix}-0")
        self.assertEqual((order.state, order.client_order_id), ("held", f"{prefix}-0"))
        by_id = await self.web.get_order_by_id("web", decisions[0].order_id)
        self.assertEqual(by_id.client_order_id, f"{prefix}-0")

    async def test_a_rejection_is_a_decision_and_a_refusal_an_error(self):
        # Proves a rejected order comes back as a Decision with its reason, and a refused request raises ServerError with the protocol's code.
        decision = await self.web.submit("web", unique("bad"), [("NO-SUCH-SKU", 1)], ship_to=NEAR)
        self.assertFalse(decision.routed)
        self.assertEqual((decision.reason, decision.detail), ("invalid", 4))
        with self.assertRaises(omniroute.ServerError) as refused:
            await self.web.get_order("web", unique("never"))
        self.assertEqual(refused.exception.name, "UnknownOrder")
        with self.assertRaises(omniroute.ServerError) as forbidden:
            await self.web.submit("c", unique("other"), [("SKU-1", 1)], ship_to=NEAR)
        self.assertEqual(forbidden.exception.name, "Forbidden")
        with self.assertRaises(omniroute.ServerError) as bad_token:
            await omniroute.connect("127.0.0.1", PORT, CA, "not-a-known-token")
        self.assertEqual(bad_token.exception.name, "BadToken")

    async def test_an_order_lives_through_confirm_ship_return_and_cancel(self):
        # Proves every order request of the protocol does what PROTOCOL.md says, from this client.
        first, second = unique("life"), unique("life")
        decision = await self.web.submit("web", first, [("SKU-1", 2)], ship_to=NEAR)
        node = decision.allocations[0].node
        self.assertEqual((await self.web.confirm("web", first)).state, "confirmed")
        shipped = await self.admin.node_ship(node, "web", first, "SKU-1", 2)
        self.assertEqual((shipped.state, shipped.allocations[0].shipped), ("shipped", 2))
        back = await self.admin.return_units(node, "web", first, "SKU-1", 1)
        self.assertEqual(back.allocations[0].returned, 1)
        await self.web.submit("web", second, [("SKU-1", 1)], ship_to=NEAR)
        self.assertEqual((await self.web.cancel("web", second)).state, "cancelled")
        with self.assertRaises(omniroute.ServerError) as closed:
            await self.web.confirm("web", second)
        self.assertEqual(closed.exception.name, "InvalidState")

    async def test_stock_and_availability(self):
        # Proves stock set and adjust apply, and availability lists nodes and the nearest.
        applied, _, errors = await self.admin.stock_set([("SKU-2", "ST-2", 40, 5)])
        self.assertEqual((applied, errors), (1, 0))
        applied, _, _ = await self.admin.stock_adjust([("SKU-2", "ST-2", -10)])
        self.assertEqual(applied, 1)
        nodes = await self.web.availability("SKU-2")
        self.assertEqual([(n.node, n.atp) for n in nodes if n.node == "ST-2"], [("ST-2", 25)])
        nearest = await self.web.availability("SKU-1", near=NEAR, count=1)
        self.assertEqual(len(nearest), 1)
        self.assertIsNotNone(nearest[0].distance_km)

    async def test_a_channel_feed_resumes_from_its_cursor(self):
        # Proves follow_orders yields each change of the channel's orders with gapless cursors, and a feed opened at the last cursor + 1 continues exactly there.
        feed = await self.admin.follow_orders("c", 0)
        start = feed.next_cursor
        ids = [unique("feed") for _ in range(3)]
        for order_id in ids:
            await self.admin.submit("c", order_id, [("SKU-1", 1)], ship_to=NEAR)
        seen = []
        async for status in feed:
            seen.append(status)
            if status.order.client_order_id == ids[-1]:
                break
        feed.close()
        cursors = [s.cursor for s in seen]
        self.assertEqual(cursors, list(range(start, start + len(seen))))
        self.assertEqual([s.change for s in seen[-3:]], ["routed"] * 3)
        await self.admin.confirm("c", ids[0])
        again = await self.admin.follow_orders("c", cursors[-1] + 1)
        status = await asyncio.wait_for(again.__anext__(), 20)
        again.close()
        self.assertEqual((status.cursor, status.change, status.order.client_order_id), (cursors[-1] + 1, "confirmed", ids[0]))

    async def test_a_node_feed_sees_its_allocations(self):
        # Proves subscribe yields the node's allocation events.
        feed = await self.admin.subscribe("WH-N", 0)
        order_id = unique("node")
        await self.admin.submit("c", order_id, [("SKU-1", 1)], ship_to=(51.0, 10.0))
        async for event in feed:
            if event.client_order_id == order_id:
                self.assertEqual(event.kind, "allocated")
                break
        feed.close()

    async def test_a_feed_is_iterated_at_once_as_documented(self):
        # Proves `async for status in client.follow_orders(channel)`, as the README writes it, works without an await first.
        order_id = unique("iter")
        await self.admin.submit("c", order_id, [("SKU-1", 1)], ship_to=NEAR)
        feed = self.admin.follow_orders("c")

        async def first():
            async for status in feed:
                if status.order.client_order_id == order_id:
                    return status

        status = await asyncio.wait_for(first(), 20)
        feed.close()
        self.assertEqual(status.change, "routed")

    async def test_bad_values_and_no_daemon_are_told_plainly(self):
        # Proves a quantity outside 1..1000000 raises InvalidRequest (a ValueError) naming the line before anything is sent, and a connect where no daemon answers raises ConnectionLost naming the address within its timeout.
        with self.assertRaises(omniroute.InvalidRequest) as bad:
            await self.web.submit("web", unique("neg"), [("SKU-1", -1)], ship_to=NEAR)
        self.assertIsInstance(bad.exception, ValueError)
        self.assertIn("line 0", str(bad.exception))
        started = time.monotonic()
        with self.assertRaises(omniroute.ConnectionLost) as lost:
            await omniroute.connect("127.0.0.1", 9, CA, WEB, timeout_s=1.0)
        self.assertIn("127.0.0.1:9", str(lost.exception))
        self.assertLess(time.monotonic() - started, 30)

    async def test_pages_list_every_order_once(self):
        # Proves all_orders pages through the channel's orders, each once, in id order.
        ids = {unique("page") for _ in range(5)}
        for order_id in ids:
            await self.admin.submit("c", order_id, [("SKU-1", 1)], ship_to=NEAR)
        listed = [o async for o in self.admin.all_orders("c", limit=2)]
        order_ids = [o.order_id for o in listed]
        self.assertEqual(order_ids, sorted(set(order_ids)))
        self.assertTrue(ids <= {o.client_order_id for o in listed})
        held = [o async for o in self.admin.all_orders("c", state="held", limit=3)]
        self.assertTrue(all(o.state == "held" for o in held))
        now_ms = time.time_ns() // 1_000_000
        recent = [o async for o in self.admin.all_orders("c", created_from_ms=now_ms - 60_000)]
        self.assertTrue(ids <= {o.client_order_id for o in recent})
        self.assertTrue(all(now_ms - 60_000 <= o.created_at_ms <= now_ms + 1_000 for o in recent))


if __name__ == "__main__":
    unittest.main()
