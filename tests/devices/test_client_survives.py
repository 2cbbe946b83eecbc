"""A device client never ends by itself: an edge that closes the connection before answering
the upgrade (a loaded edge's head timeout does) is retried like any other failure. Before,
``websockets``' ``InvalidMessage`` escaped ``HubClient._run`` and the client's task died
silently — a join storm's riders were never welcomed and nothing said why."""

from __future__ import annotations

import asyncio

from devices.client import DeviceStream, HubClient


def test_a_client_retries_an_edge_that_hangs_up_during_the_upgrade() -> None:
    async def scenario() -> tuple[bool, dict[str, int], int]:
        accepted = 0

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()  # no HTTP answer at all

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = HubClient(f"ws://127.0.0.1:{port}/v1/devices", [DeviceStream("d", "p", "s")], token="t",
                           max_backoff_s=0.2)
        client.start()
        await asyncio.sleep(1.5)
        alive = client._task is not None and not client._task.done()
        await client.close()
        server.close()
        await server.wait_closed()
        return alive, dict(client.errors), accepted

    alive, errors, accepted = asyncio.run(scenario())
    assert alive, errors
    assert accepted >= 3 and errors.get("InvalidMessage", 0) >= 2, (accepted, errors)
