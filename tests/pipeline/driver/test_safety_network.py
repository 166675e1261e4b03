"""The local Ray cluster ``start_ray`` starts listens on loopback only: anyone who can reach a
Ray port can run code on the machine. Without a dashboard: the session's cluster, which
``start_ray`` started; with one, a cluster of its own in a fresh interpreter."""

from __future__ import annotations

import inspect
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Ray cluster

ROOT = Path(__file__).resolve().parents[3]


def scan() -> dict:
    """The listening sockets of this driver's Ray cluster (every process of its session, a worker
    included), and the ports Ray announces for it."""
    import psutil
    import ray

    ray.get(ray.remote(lambda: None).remote())  # a worker process is up, with its own server
    node_info = ray._private.worker._global_node
    driver, session = psutil.Process(), node_info.get_session_dir_path()
    processes = {p.pid: p for p in [driver, *driver.children(recursive=True)]}
    processes.update((p.pid, p) for p in psutil.process_iter(["cmdline"]) if session in " ".join(p.info["cmdline"] or []))
    listening = []
    for process in processes.values():
        for c in process.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                listening.append([" ".join(process.cmdline())[:80], c.laddr.ip, c.laddr.port])
    node = ray.nodes()[0]
    announced = [node[k] for k in ("NodeManagerPort", "ObjectManagerPort", "MetricsExportPort", "MetricsAgentPort",
                                   "RuntimeEnvAgentPort")]
    announced.append(int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]))
    if node_info.address_info.get("webui_url"):
        announced.append(int(node_info.address_info["webui_url"].rsplit(":", 1)[1]))
    return {"listening": listening, "announced": announced}


PROBE = f"""
import json
from pipeline.recipe.config import RunConfig
from pipeline.driver.roles import start_ray

config = RunConfig()
config.ray.dashboard = True
start_ray(config)
{inspect.getsource(scan)}
print(json.dumps(scan()))
"""


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too


def _check(found: dict) -> None:
    ports = {port for _, _, port in found["listening"]}
    assert set(found["announced"]) <= ports  # the scan saw Ray's servers, so it can fail
    assert [s for s in found["listening"] if not _is_loopback(s[1])] == []


def test_a_local_cluster_listens_on_loopback_only(ray_cluster):
    _check(scan())


def test_with_its_dashboard_a_local_cluster_listens_on_loopback_only():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert len(found["announced"]) == 7  # the dashboard's port among them
    _check(found)
