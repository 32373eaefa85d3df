"""Running the agent: the unix-socket server for the local CLI, and once the node is in a
cluster the mutual-TLS API server and the join server; the task runner; the heartbeats.
SIGTERM or SIGINT stops it gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from corral.agent.app import api_app, join_app
from corral.agent.facts_cache import FACTS_REFRESH_S
from corral.agent.http_guards import PeerCertProtocol
from corral.agent.node_agent import NodeAgent
from corral.client import KEEPALIVE_S

log = logging.getLogger(__name__)


TICK_S = 1.0  # how often an idle server looks at its exit flag and refreshes its Date header


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the agent (several run at once) and
    wakes once a second when idle, not ten times: uvicorn's loop looks for its exit flag
    every 0.1 s, and an agent runs three servers (30 wake-ups a second of an idle process).
    `stop()` ends it at once all the same."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        self.should_exit = True
        self._exit.set()

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # uvicorn refreshes the Date header when counter % 10 == 0: every tick here.
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), TICK_S)
            should_exit = await self.on_tick(counter)


class AgentServer:
    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.servers: list[_Server] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._tls_started = False
        self._stop = asyncio.Event()
        self._heartbeat_stop = threading.Event()

    def _add(self, config: uvicorn.Config) -> None:
        server = _Server(config)
        self.servers.append(server)
        self.tasks.append(asyncio.create_task(server.serve()))

    def start_tls(self) -> None:
        """Serve peers (mutual TLS) and joiners, once this node has its certificate."""
        if self._tls_started or not self.agent.pki.member:
            return
        self._tls_started = True
        s, pki = self.agent.settings, self.agent.pki
        try:
            self.agent.write_crl()  # the CA holder's revocation list, current from the start
        except (OSError, ValueError) as exc:
            log.error("could not write the revocation list to %s: %s", s.crl_file, exc)

        def tls_config(app: Any, port: int, client_certs: ssl.VerifyMode) -> uvicorn.Config:
            return uvicorn.Config(
                app,
                timeout_keep_alive=int(KEEPALIVE_S) + 15,  # past the peers' client keep-alive
                http=PeerCertProtocol,  # carries the client certificate into each request
                host=s.address,
                port=port,
                log_level="warning",
                lifespan="off",
                ssl_certfile=str(pki.node_cert),
                ssl_keyfile=str(pki.node_key),
                ssl_ca_certs=str(pki.ca_cert),
                ssl_cert_reqs=client_certs,
            )

        self._add(tls_config(api_app(self.agent, "peer"), s.api_port, ssl.CERT_REQUIRED))
        self._add(tls_config(join_app(self.agent), s.join_port, ssl.CERT_NONE))
        log.info("serving peers on %s:%d (mTLS), joins on %d", s.address, s.api_port, s.join_port)

    def _heartbeats(self) -> None:
        wake = self.agent.gossip.wake  # news to push or a deadline: sooner than the beat
        while not self._heartbeat_stop.is_set():
            try:
                delay = self.agent.heartbeat_once()
            except Exception:
                log.exception("heartbeat failed")
                delay = self.agent.settings.beat_interval
            wake.wait(delay)

    def _facts(self) -> None:
        """Recompute this node's facts off the heartbeat path (probes, subprocesses)."""
        while not self._heartbeat_stop.wait(FACTS_REFRESH_S):
            try:
                self.agent.facts_cache.refresh()
            except Exception:
                log.exception("computing this node's facts failed")

    async def run(self) -> None:
        s = self.agent.settings
        os.umask(0o077)
        s.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        s.run_dir.chmod(0o700)
        s.socket_path.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # Driver calls run their own event loops: keep them off this one.
        for vm, recorded, observed in await asyncio.to_thread(self.agent.vms.reconcile):
            log.warning("VM %s was recorded %s but is %s", vm, recorded, observed)
        for recovered in await asyncio.to_thread(self.agent.runner.recover_interrupted):
            log.warning(
                "task %s (%s) was interrupted: now %s",
                recovered.id,
                recovered.kind,
                recovered.state,
            )
        self.agent.runner.start()

        def become_member() -> None:
            loop.call_soon_threadsafe(self.start_tls)

        self.agent.on_member = become_member
        self._add(
            uvicorn.Config(
                api_app(self.agent, "local"),
                uds=str(s.socket_path),
                log_level="warning",
                lifespan="off",
            )
        )
        self.start_tls()
        heartbeat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        heartbeat.start()
        threading.Thread(target=self._facts, name="facts", daemon=True).start()
        while not self.servers[0].started and not self.tasks[0].done():
            await asyncio.sleep(0.01)
        if s.socket_path.exists():
            s.socket_path.chmod(0o600)
        log.info("agent %s ready on %s", self.agent.name, s.socket_path)
        done_early = asyncio.ensure_future(
            asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
        )
        await asyncio.wait(
            [asyncio.ensure_future(self._stop.wait()), done_early],
            return_when=asyncio.FIRST_COMPLETED,
        )
        log.info("agent %s stopping", self.agent.name)
        self.agent.tasks.changes.close()  # open task streams end, so the servers can
        for server in self.servers:
            server.stop()
        self._heartbeat_stop.set()
        self.agent.gossip.wake.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.to_thread(self.agent.runner.stop)
        self.agent.close()
        s.socket_path.unlink(missing_ok=True)
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a server of the agent failed: {task.exception()}")


def run_agent(agent: NodeAgent) -> None:
    """Serve until SIGTERM/SIGINT."""
    asyncio.run(AgentServer(agent).run())
