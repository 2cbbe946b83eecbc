"""Small helpers shared by the cluster tests and scenarios."""

from __future__ import annotations

import httpx


def operator_headers(base_url: str) -> dict[str, str]:
    """An operator's ``Authorization`` header from a dev-mode edge (loopback only)."""
    reply = httpx.post(f"{base_url}/v1/dev/tokens", json={"kind": "operator"}, timeout=30)
    if reply.status_code in (404, 405):  # an edge without authentication
        return {}
    reply.raise_for_status()
    return {"Authorization": f"Bearer {reply.json()['token']}"}


def actor_alive(session_id: str, namespace: str) -> bool:
    """Whether the class's own actor (``actor_name``) exists in Ray's ``namespace``."""
    import ray

    from actors.session_actor import actor_name

    try:
        ray.get_actor(actor_name(session_id), namespace=namespace)
    except ValueError:
        return False
    return True
