"""The cluster client against three live replicas: the Rust test
tests/python_cluster.rs starts them (channel web, SKU-1 at WH-N) and runs
this file with OMNIROUTE_CLUSTER_ADDRS (the replicas' client addresses,
followers first, comma-separated), OMNIROUTE_CLUSTER_LEADER (the leader's),
OMNIROUTE_CLUSTER_CA (one PEM file holding the three replicas'
certificates) and OMNIROUTE_WEB_TOKEN.

Without OMNIROUTE_CLUSTER_ADDRS this module holds no tests at all (see
load_tests), so the single-daemon run of the suite (tests/python_client.rs)
counts and reports exactly what it did before."""

import asyncio
import os
import time
import unittest

import omniroute

ADDRS = [a for a in os.environ.get("OMNIROUTE_CLUSTER_ADDRS", "").split(",") if a]
LEADER = os.environ.get("OMNIROUTE_CLUSTER_LEADER", "")
CA = os.environ.get("OMNIROUTE_CLUSTER_CA", "")
WEB = os.environ.get("OMNIROUTE_WEB_TOKEN", "dev-web-token")
NEAR = (50.0, 10.0)
#: An address where no replica listens (the discard port).
NOWHERE = "127.0.0.1:9"


def unique(prefix):
    return f"{prefix}-{time.time_ns()}"


def load_tests(loader, tests, pattern):
    """The cluster tests when a cluster is given, else none: not even
    skipped ones, which the single-daemon run would count."""
    if not ADDRS:
        return unittest.TestSuite()
    return loader.loadTestsFromTestCase(ClusterClientTest)


class ClusterClientTest(unittest.IsolatedAsyncioTestCase):
    async def test_the_first_address_is_a_follower_naming_the_leader(self):
        # Proves the setup the other tests rely on: a plain Client of the first address (trusting the one of the three certificates that is its own) gets NotLeader naming the leader's address.
        host, port = omniroute.cluster.split_address(ADDRS[0])
        async with await omniroute.connect_replica(host, port, CA, WEB) as follower:
            with self.assertRaises(omniroute.ServerError) as refused:
                await follower.submit("web", unique("plain"), [("SKU-1", 1)], ship_to=NEAR)
        self.assertEqual((refused.exception.code, refused.exception.name), (20, "NotLeader"))
        self.assertEqual(refused.exception.message, LEADER)
        self.assertNotEqual(ADDRS[0], LEADER)

    async def test_orders_sent_to_a_follower_first_are_routed_by_the_leader(self):
        # Proves connect_cluster with a follower first (and the three certificates in one PEM file) routes pipelined orders on the leader, answers a resubmission with the same decision, and reads an order back.
        prefix = unique("cluster")
        async with await omniroute.connect_cluster(",".join(ADDRS), CA, WEB) as cluster:
            self.assertEqual((cluster.address, cluster.role), (ADDRS[0], "channel:web"))
            decisions = await asyncio.gather(*[
                cluster.submit("web", f"{prefix}-{i}", [("SKU-1", 1 + i % 3)], ship_to=NEAR)
                for i in range(20)])
            self.assertEqual(cluster.address, LEADER)
            self.assertTrue(all(d.routed for d in decisions), decisions)
            self.assertEqual([sum(a.qty for a in d.allocations) for d in decisions], [1 + i % 3 for i in range(20)])
            self.assertEqual(len({d.order_id for d in decisions}), 20)
            again = await cluster.submit("web", f"{prefix}-0", [("SKU-1", 1)], ship_to=NEAR)
            self.assertEqual(again.order_id, decisions[0].order_id)
            order = await cluster.get_order("web", f"{prefix}-3")
            self.assertEqual((order.state, order.order_id), ("held", decisions[3].order_id))
            self.assertEqual(order.allocations[0].node, "WH-N")

    async def test_an_address_that_does_not_answer_is_passed_over(self):
        # Proves a replica that cannot be reached within connect_timeout_s is passed over for the next address, the follower then names the leader, and the order is routed.
        async with await omniroute.connect_cluster([NOWHERE] + ADDRS, CA, WEB, connect_timeout_s=0.5) as cluster:
            decision = await cluster.submit("web", unique("past"), [("SKU-1", 1)], ship_to=NEAR)
            self.assertTrue(decision.routed)
            self.assertEqual(cluster.address, LEADER)

    async def test_no_replica_answering_raises_the_last_error_at_the_deadline(self):
        # Proves the retries are bounded: with no replica answering, connect_cluster raises ConnectionLost naming the address within about deadline_s.
        started = time.monotonic()
        with self.assertRaises(omniroute.ConnectionLost) as lost:
            await omniroute.connect_cluster([NOWHERE], CA, WEB, deadline_s=1.5, connect_timeout_s=0.3)
        self.assertIn(NOWHERE, str(lost.exception))
        self.assertLess(time.monotonic() - started, 1.5 + 1.0)


if __name__ == "__main__":
    unittest.main()
