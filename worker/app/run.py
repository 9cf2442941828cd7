"""Running one serving replica as a process: signals, exit status, telemetry shut down last.

Exit status: 0 after a graceful stop (in-flight work finished and committed), 1 when anything
failed or the grace period ran out (one line names the root cause, :mod:`worker.app.fatal`; a
traceback follows unless the cause is one fixed outside the code: Kafka refusing access, the route
store unwritable, output that cannot be delivered); a :class:`ConfigError` (a setting the
brokers cannot serve) is raised for the command line to print as one line (exit status 2). A
second SIGTERM/SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from worker.app import signals
from worker.app.fatal import stop_cause
from worker.app.worker import EncoderFactory, ReplicaFactory, ReplicaWorker, route_replica
from worker.config import Settings
from worker.embedding import encoder_pool
from worker.errors import ConfigError
from worker.kafka_access import KafkaAccessError
from worker.telemetry import Telemetry

logger = logging.getLogger(__name__)

# Beyond the pipeline's own grace period: closing the clients and flushing telemetry.
CLOSE_MARGIN_S = 5.0


async def run_worker(
    settings: Settings,
    telemetry: Telemetry | None = None,
    *,
    replica_factory: ReplicaFactory = route_replica,
    encoder_factory: EncoderFactory = encoder_pool,
) -> int:
    """Run a replica with signal handling; returns the exit status."""
    telemetry = telemetry or Telemetry(
        replica_id=settings.replica_id,
        otlp_endpoint=settings.otlp_endpoint,
        stall_after_s=settings.liveness_stall_s,
    )
    worker = ReplicaWorker(
        settings,
        telemetry,
        replica_factory=replica_factory,
        encoder_factory=encoder_factory,
    )
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    forced = False

    def force_stop(why: str) -> None:
        nonlocal forced
        if main is not None and not main.done():
            forced = True
            logger.error("stopping now: %s", why)
            main.cancel()

    def on_signal(number: signal.Signals) -> None:
        if worker.stopping:
            force_stop(f"second {number.name}")
            return
        logger.info("%s received: finishing in-flight work", number.name)
        worker.stop()
        loop.call_later(
            settings.shutdown_timeout_s + CLOSE_MARGIN_S, force_stop, "shutdown grace period exceeded"
        )

    try:
        with signals.handling(on_signal):
            await worker.run()
    except asyncio.CancelledError:
        if not forced:
            raise
        return 1
    except ConfigError:
        raise  # one line and exit status 2 (the command line prints it)
    except KafkaAccessError as error:  # TLS, SASL or a missing ACL: one line names it, no traceback
        telemetry.health.fail(str(error))
        logger.error("routeworker cannot start: Kafka refuses access: %s", error)
        return 1
    except Exception as error:  # the task boundary of the whole replica: name the cause, exit non-zero
        cause = stop_cause(error, settings.store_path)
        telemetry.health.fail(cause.line)
        if cause.known:  # fixed outside the code: the line says it all
            logger.error("routeworker stopped: %s", cause.line)
        else:  # a bug or the unforeseen: the traceback follows the line
            logger.error("routeworker stopped on an error: %s", cause.line, exc_info=error)
        return 1
    finally:
        await asyncio.to_thread(telemetry.shutdown)
    logger.info("stopped cleanly")
    return 0
