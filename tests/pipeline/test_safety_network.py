"""The local Ray cluster ``start_ray`` starts listens on loopback only: anyone who can reach a
Ray port can run code on the machine."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts a Ray cluster: about 10 s

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: start_ray keeps a cluster some other test started in this one.
PROBE = """
import json, sys
import psutil, ray
from pipeline.config import RunConfig
from pipeline.roles import start_ray

config = RunConfig()
config.ray.dashboard = sys.argv[1] == "dashboard"
start_ray(config)
ray.get(ray.remote(lambda: None).remote())  # a worker process is up, with its own server
driver, session = psutil.Process(), ray._private.worker._global_node.get_session_dir_path()
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
if config.ray.dashboard:
    announced.append(int(ray._private.worker._global_node.address_info["webui_url"].rsplit(":", 1)[1]))
ray.shutdown()
print(json.dumps({"listening": listening, "announced": announced}))
"""


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too


@pytest.mark.parametrize("dashboard", ["no-dashboard", "dashboard"])
def test_a_local_cluster_listens_on_loopback_only(dashboard):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, dashboard], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    ports = {port for _, _, port in found["listening"]}
    assert set(found["announced"]) <= ports  # the scan saw Ray's servers, so it can fail
    assert [s for s in found["listening"] if not _is_loopback(s[1])] == []
