"""A Ray cluster of several nodes on this one machine, all on loopback, for the multi-node tests
and benchmarks: each node its own raylet and object store, with the CPUs and custom resources it
is given, as separate machines would be.

    python -m bench.local_cluster --node '{"num_cpus": 2, "resources": {"learner_node": 2}}' \\
                                  --node '{"num_cpus": 2, "resources": {"rollout_node": 2}}'

The first ``--node`` is the head (with the dashboard, so the Jobs API, on ``--dashboard-port``).
Once every node is up it prints one JSON line, ``{"address": GCS, "dashboard": URL, "nodes":
[node ids]}``, then reads commands from stdin: ``kill I`` SIGKILLs node I's raylet and every
process of it (a lost machine), ``add JSON`` starts another node; each answers with a JSON line.
End of input stops the cluster.

    python -m bench.local_cluster --node '{"num_cpus": 1}' --node '{"num_cpus": 1}' --time-loss 3 [--ray-health-checks]

instead SIGKILLs the last node ``--time-loss`` times (adding it back each time) and prints how
long Ray took to declare it dead: with this module's health checks, or Ray's defaults.

``ray start --address`` cannot do this on loopback: with Ray's multi-node mode on, it swaps
127.0.0.1 for the machine's outward address; with it off, it refuses to start a second node.
Ray's own ``cluster_utils.Cluster`` starts the nodes directly, with the mode off, so every server
binds 127.0.0.1. The processes that join the cluster need ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
too, for the same reason (``ENV``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# The GCS checks each node's raylet every second and declares it dead after 3 failed checks in a
# row: a lost node is known in 6-7 s, where Ray's defaults (5 checks 3 s apart) take 16-17 s
# (``--time-loss``), and a test or benchmark that loses nodes waits that much less for each. A raylet that is
# alive but slow still answers within a check's timeout (Ray's 10 s, kept), so a loaded machine
# is not taken for a lost one.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
ROOT = Path(__file__).resolve().parents[1]


class LocalCluster:
    """This module run in a process of its own, driven from Python: ``nodes`` are the nodes'
    arguments (the head's first), ``env`` the process's environment (with :data:`ENV`)."""

    def __init__(self, nodes: list[dict], env: dict[str, str] | None = None, dashboard_port: int | None = None,
                 log: Path | None = None):
        command = [sys.executable, "-m", "bench.local_cluster",
                   *(["--dashboard-port", str(dashboard_port)] if dashboard_port else []),
                   *(argument for node in nodes for argument in ("--node", json.dumps(node)))]
        self.log = log.open("w") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, env={**(env or os.environ), **ENV}, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        started = self.process.stdout.readline()
        if not started:
            self.close()
            raise RuntimeError(f"the local cluster did not start{f'; see {log}' if log else ''}")
        started = json.loads(started)
        self.address, self.dashboard, self.nodes = started["address"], started["dashboard"], started["nodes"]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def kill(self, index: int) -> str:
        """SIGKILL node ``index``'s raylet and processes; its id."""
        return self._command(f"kill {index}")["killed"]

    def add(self, node: dict) -> str:
        """Start another node; its id (and its index, the next in :attr:`nodes`)."""
        added = self._command(f"add {json.dumps(node)}")["added"]
        self.nodes.append(added)
        return added

    def _command(self, line: str) -> dict:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        """Stop every node (the cluster stops at the end of its input)."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", action="append", type=json.loads, required=True,
                        help="a node's arguments as JSON (num_cpus, resources, object_store_memory...)")
    parser.add_argument("--dashboard-port", type=int, default=None, help="the head's dashboard (Jobs API)")
    parser.add_argument("--time-loss", type=int, default=0, metavar="N",
                        help="time N losses of the last node instead of reading commands")
    parser.add_argument("--ray-health-checks", action="store_true", help="Ray's default health checks, not ours")
    args = parser.parse_args()
    os.environ.update(ENV)  # before Ray reads it at import
    from ray.cluster_utils import Cluster

    # the head's dashboard agent (which runs submitted jobs) on a free port, as the other nodes'
    # are: the default one may be taken by another Ray instance on this machine
    head = {"include_dashboard": args.dashboard_port is not None, "dashboard_host": "127.0.0.1",
            "dashboard_agent_listen_port": None,
            "_system_config": {} if args.ray_health_checks else HEALTH_CHECKS,
            **({"dashboard_port": args.dashboard_port} if args.dashboard_port else {}), **args.node[0]}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = [cluster.head_node] + [cluster.add_node(**node) for node in args.node[1:]]
    dashboard = f"http://{cluster.head_node.webui_url}" if args.dashboard_port else None
    print(json.dumps({"address": cluster.address, "dashboard": dashboard,
                      "nodes": [node.node_id for node in nodes]}), flush=True)
    if args.time_loss:
        _time_losses(cluster, nodes[-1], args.node[-1], args.time_loss)
        cluster.shutdown()
        return 0
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "kill":
            node = nodes[int(argument)]
            cluster.remove_node(node, allow_graceful=False)
            print(json.dumps({"killed": node.node_id}), flush=True)
        elif command == "add":
            node = cluster.add_node(**json.loads(argument))
            nodes.append(node)
            print(json.dumps({"added": node.node_id}), flush=True)
    cluster.shutdown()
    return 0


def _time_losses(cluster, node, arguments: dict, times: int) -> None:
    import ray

    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    for _ in range(times):
        cluster.remove_node(node, allow_graceful=False)
        lost, started = node.node_id, time.monotonic()
        while any(seen["NodeID"] == lost and seen["Alive"] for seen in ray.nodes()):
            time.sleep(0.05)
        print(f"node declared dead {time.monotonic() - started:.1f} s after its SIGKILL", flush=True)
        node = cluster.add_node(**arguments)
        cluster.wait_for_nodes()
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
