"""Does a broker answer Kafka requests? One Metadata round trip with aiokafka, callable from any thread.

An open port is not enough: a KRaft broker binds its client port only late in start-up, but a
Metadata response that lists the broker itself shows it registered, unfenced and serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


def metadata_brokers(bootstrap: str, timeout_s: float = 5.0) -> set[int] | None:
    """Node ids of the brokers that ``bootstrap`` reports, or None when it does not answer.

    Runs its own event loop in a helper thread, so a synchronous caller inside a running loop
    (a test helper restarting a broker) can use it too.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-probe") as pool:
        return pool.submit(asyncio.run, _brokers(bootstrap, timeout_s)).result()


async def _brokers(bootstrap: str, timeout_s: float) -> set[int] | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()  # the bootstrap: a Metadata round trip with ``bootstrap`` itself
            cluster = await admin.describe_cluster()
        return {int(broker["node_id"]) for broker in cluster["brokers"]}
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        await admin.close()
