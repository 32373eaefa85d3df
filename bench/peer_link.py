"""What a pooled peer connection saves: the latency of one request from node1 to node2's
API (`GET /v1/health`, mutual TLS, the member check included) over a new TLS connection per
request, as every peer call made before the agent pooled its clients, against one kept-alive
connection, interleaved in one run; and the same request forwarded by node1's agent (CLI ->
unix socket -> node1 -> node2), which now goes over its pooled connection."""

from __future__ import annotations

import argparse
import http.client
import ssl
import statistics
import time

from bench.harness import Result, bench_lab, command_line, interleaved, spread
from corral.client import AgentClient
from corral.cluster.pki import PkiPaths
from corral.lab import agents, netns
from corral.lab.plan import LabNode, LabPlan


class _InNamespace(http.client.HTTPSConnection):
    """An HTTPS connection made from inside a lab node's namespace."""

    def __init__(self, ns: str, host: str, ctx: ssl.SSLContext, name: str) -> None:
        super().__init__(host, 4710, context=ctx, timeout=30)
        self._ns, self._ctx, self._name = ns, ctx, name

    def connect(self) -> None:
        raw = netns.connect_in(self._ns, self.host, self.port, timeout=30)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self._name)


def _context(node: LabNode) -> ssl.SSLContext:
    pki = PkiPaths(node.local_dir / "state" / "pki")
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.node_cert), str(pki.node_key))
    return ctx


def _get(conn: _InNamespace) -> float:
    t0 = time.perf_counter()
    conn.request("GET", "/v1/health")
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"node2 answered {response.status}")
    return time.perf_counter() - t0


def run(plan: LabPlan, requests: int, runs: int) -> Result:
    result = Result(
        "peer-link",
        "Peer requests: a new TLS connection each, against one kept alive",
        __doc__.split("\n\n")[0].replace("\n", " ") if __doc__ else "",
        [("what", "what"), ("median", "median ms"), ("p99", "p99 ms"), ("n", "samples")],
    )
    node1, node2 = plan.nodes
    ctx = _context(node1)
    address = str(node2.migration_address.ip)

    def fresh(_: int) -> dict[str, list[float]]:
        out = []
        for _ in range(requests):
            conn = _InNamespace(node1.netns, address, ctx, node2.name)
            try:
                out.append(_get(conn))  # connect + handshake + request
            finally:
                conn.close()
        return {"s": out}

    def kept(_: int) -> dict[str, list[float]]:
        conn = _InNamespace(node1.netns, address, ctx, node2.name)
        try:
            _get(conn)  # the one handshake, not counted
            return {"s": [_get(conn) for _ in range(requests)]}
        finally:
            conn.close()

    def forwarded(_: int) -> dict[str, list[float]]:
        out = []
        with AgentClient(socket_path=agents.agent_socket(node1), node="node2") as client:
            for _ in range(requests):
                t0 = time.perf_counter()
                client.get("/health")
                out.append(time.perf_counter() - t0)
        return {"s": out}

    sides = interleaved({"fresh": fresh, "kept": kept, "forwarded": forwarded}, runs)
    ms = {name: [x * 1000 for r in rs for x in r["s"]] for name, rs in sides.items()}
    stats = {name: spread(values) for name, values in ms.items()}
    ratio = statistics.median(ms["fresh"]) / statistics.median(ms["kept"])
    labels = {
        "fresh": "node1 -> node2, a new TLS connection per request (before pooling)",
        "kept": "node1 -> node2, one kept-alive connection (what the pool does)",
        "forwarded": "CLI -> node1's socket -> node2 (the agent's pooled client)",
    }
    for name, label in labels.items():
        s = stats[name]
        result.rows.append(
            {
                "what": label,
                "median": f"{s['median']:.2f}",
                "p99": f"{s['p99']:.2f}",
                "n": s["n"],
            }
        )
    result.notes.append(
        f"new connection / kept-alive connection, medians: {ratio:.1f}x, measured in the same"
        f" run ({runs} interleaved rounds of {requests} requests each)"
    )
    result.raw = {"ms": ms, "ratio_fresh_over_kept": ratio}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    with bench_lab(2) as plan:
        result = run(plan, args.requests, args.runs)
    result.write(command_line())


if __name__ == "__main__":
    main()
