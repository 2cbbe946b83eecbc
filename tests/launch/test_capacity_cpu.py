"""The capacity benchmark's CPU split: a dense classes' host is a class process like a class's
own actor (before, its CPU went to "other Ray workers" and a dense step showed no actors)."""

from __future__ import annotations

import os

import psutil

from launch.bench import _classify
from launch.capacity import cpu_groups


def test_hosts_and_actors_are_both_class_processes() -> None:
    processes = {
        "edge": {"cpu_pct_of_one_core": 50.0},
        "ray-worker:SessionHost:11": {"cpu_pct_of_one_core": 20.0},
        "ray-worker:SessionActor:12": {"cpu_pct_of_one_core": 10.0},
        "ray-worker:13": {"cpu_pct_of_one_core": 1.0},
        "swarm:14": {"cpu_pct_of_one_core": 30.0},
    }
    cpu = cpu_groups(processes, devices=1000, seconds=10.0)
    assert cpu["session_actors_pct"] == 30.0 and cpu["session_actors"] == 2
    assert cpu["per_session_actor_pct"] == 15.0
    assert cpu["ray_workers_other_pct"] == 1.0 and cpu["swarm_pct"] == 30.0
    assert cpu["total_pct"] == 111.0
    assert cpu["edge_us_per_device_second"] == 500.0  # 0.5 core over 1,000 devices


def test_a_process_is_classified_by_its_role() -> None:
    me = psutil.Process(os.getpid())
    assert _classify(me, edge_pid=os.getpid(), swarm_pid=0) == "edge"
    assert _classify(me, edge_pid=0, swarm_pid={os.getpid(), 1}) == f"swarm:{os.getpid()}"
