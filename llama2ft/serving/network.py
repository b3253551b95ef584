"""Checks shared by the servers (web chat, API): ports, loopback hosts, a warning when a server is
reachable from other machines with nothing to keep strangers out."""
from __future__ import annotations

import ipaddress
import sys


def port_problems(port: int) -> list[str]:
    return [] if 0 < int(port) < 65536 else [f"port={port}: must be in 1..65535"]


def queue_problems(max_queue: int | None) -> list[str]:
    return [] if max_queue is None or int(max_queue) >= 0 else [f"max_queue={max_queue}: must be >= 0 (or null)"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, protected: bool, what: str, missing: str) -> None:
    """Say so when a server listens beyond this machine with nothing to keep strangers out."""
    if not is_loopback(host) and not protected:
        print(f"warning: host={host} exposes {what} beyond this machine with no {missing}", file=sys.stderr,
              flush=True)


def drain_problems(seconds: float) -> list[str]:
    return [] if float(seconds) >= 0 else [f"drain_seconds={seconds}: must be >= 0"]
