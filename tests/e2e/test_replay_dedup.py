"""A resumed ``/events`` stream carries every id exactly once while replay and live overlap.

On reconnect the stream attaches to the session (so live events reach its channel) and then
replays the log from Last-Event-ID. An event published in between is both in the log and in the
channel; the stream must write it once. To make the overlap certain rather than lucky, the
backlog is larger than the loopback socket buffers can hold (server send buffer <= 4 MiB), so
the server is still blocked in the replay when the test publishes the live events.
"""

from __future__ import annotations

from collections import Counter

import httpx
import trio

from tests.helpers import AUTH, SSEReader, start_server

MiB = 1024 * 1024
SESSION = "dedup"
PAYLOAD = "x" * (32 * 1024)
BACKLOG = 400  # 400 x 32 KiB = 12.5 MiB: far more than is in flight on one loopback socket
LIVE = 100  # published mid-replay; fewer than stream_queue_events (256), so no overflow path


async def _next_id(reader: SSEReader) -> str | None:
    event = await reader.next_data(timeout=10)
    reader.raw = b""  # the bytes are not needed here, and 12 MiB of += would be quadratic
    return event.id


async def test_replay_and_live_publishing_overlap_without_duplicates(
    nursery: trio.Nursery,
) -> None:
    server, info = await start_server(nursery, replay_events=2 * BACKLOG, replay_bytes=64 * MiB)
    with trio.fail_after(30):
        async with httpx.AsyncClient(base_url=info.url, headers=AUTH, timeout=10) as http:
            # A first stream that reads a few live events, then goes away.
            async with http.stream("GET", f"/events?session_id={SESSION}") as first:
                assert first.status_code == 200
                reader = SSEReader(first)
                published = [await server.publish(SESSION, f"early-{i}") for i in range(3)]
                seen = [(await reader.next_data()).id for _ in published]
                assert seen == published
            last_seen = int(seen[-1])

            # Published while no stream is attached (or the old one is being torn down).
            backlog = [await server.publish(SESSION, PAYLOAD) for _ in range(BACKLOG)]

            async with http.stream(
                "GET", f"/events?session_id={SESSION}", headers={"Last-Event-ID": str(last_seen)}
            ) as second:
                assert second.status_code == 200
                reader = SSEReader(second)
                # The first replayed event proves the stream attached and is replaying; the rest
                # of the backlog cannot fit in the socket buffers, so replay is still running.
                ids = [await _next_id(reader)]
                live = [await server.publish(SESSION, f"live-{i}") for i in range(LIVE)]
                while ids[-1] != live[-1]:
                    ids.append(await _next_id(reader))
                # Published only once everything expected has arrived (so after the replay),
                # it follows whatever else the stream still had queued: e.g. a second copy of
                # the live events, which were in the log (replayed) and in the channel.
                sentinel = await server.publish(SESSION, "sentinel")
                while ids[-1] != sentinel:
                    ids.append(await _next_id(reader))

    expected = [*backlog, *live, sentinel]
    assert [int(i) for i in expected] == list(range(last_seen + 1, last_seen + len(expected) + 1))
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"{len(duplicated)} ids sent twice, e.g. {duplicated[:5]}"
    assert ids == expected
