"""Following a generation that runs on another instance: one upstream per message, mirrored.

General layout::

    Follower                  one per instance; its pumps run in the app's task group
      Mirror                  a local LiveStream fed by ONE upstream SSE connection to the
                              owner's internal route; every local subscriber reads the mirror

A subscriber on instance B of a message generating on A reads B's mirror exactly as it would
read A's stream (streams.py): ``init`` at the mirror's current K, then every frame after K,
then ``done``. The mirror starts from the owner's own ``init`` (its blocks at K) and publishes
each upstream event through the same reducer, so its seq numbers are A's: an event whose id is
not the mirror's next seq means a gap, and the mirror is dropped (see below) rather than ever
showing a duplicate or skipping one.

Failure cases (docs/deployment.md has the whole table):

* The upstream breaks before ``done``: the follower asks PostgreSQL. Row ended -> ``done``
  with the stored status. Owner dead (its liveness lock is free) -> the row is taken over
  here (continued, or interrupted: turnlog.recovery) and the mirror is dropped, so that its
  readers reconnect to the stored checkpoint rather than keep text that was never stored;
  a subscriber is never left waiting. Owner alive -> reconnect; its new ``init`` must be at
  the mirror's seq, else the mirror is dropped.
* Dropped (a gap, or nobody reads it any more): its subscribers' responses end without
  ``done``; their clients reconnect (``Last-Event-ID``) and get a fresh init, as after any
  network break.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Final

import anyio
import httpx
import msgspec
import structlog
from anyio.abc import TaskGroup
from turnlog_reducer import StreamProtocolError, decode_blocks, decode_event

from turnlog.cluster import INTERNAL_HEADER, Cluster
from turnlog.commands import Chat
from turnlog.streams import LiveStream, done_for

log = structlog.get_logger("turnlog.follow")

PING: Final = b": ping\n\n"
# A mirror nobody has read for this long closes its upstream.
UNREAD_S = 5.0
# How long a follower keeps reconnecting to a living owner before dropping the mirror.
RECONNECT_S = 10.0


class _Init(msgspec.Struct):
    seq: int
    status: str
    blocks: msgspec.Raw


class Mirror:
    """A local copy of a stream that runs elsewhere, and whether it was dropped."""

    __slots__ = ("dropped", "stream")

    def __init__(self, stream: LiveStream) -> None:
        self.stream = stream
        self.dropped = False


class _Upstream:
    """One open SSE response from the owner, read frame by frame."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_raw()
        self._buffer = bytearray()

    async def next(self) -> tuple[bytes, int, bytes] | None:
        """(event name, id, data) of the next frame; (b"", 0, b"") for a ping; None at the
        end of the response."""
        while True:
            end = self._buffer.find(b"\n\n")
            if end >= 0:
                block = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                if block.startswith(b":"):
                    return b"", 0, b""
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
                # `recovering` carries no id (it is not a stream event).
                return fields[b"event"], int(fields.get(b"id", b"0")), fields[b"data"]
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                return None
            self._buffer += chunk

    def buffered_recovering(self) -> int | None:
        """The attempt of a ``recovering`` frame already buffered right after the ``init``
        just read (the owner sends both in one write), consumed; None if there is none."""
        end = self._buffer.find(b"\n\n")
        if end < 0 or not self._buffer.startswith(b"event: recovering\n"):
            return None
        block = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return _recovering_attempt(block.split(b"data: ", 1)[1])

    async def aclose(self) -> None:
        await self.response.aclose()


class _Recovering(msgspec.Struct):
    attempt: int


def _recovering_attempt(data: bytes) -> int:
    return msgspec.json.decode(data, type=_Recovering).attempt


class Follower:
    """Mirrors of messages generating on other instances, one upstream each."""

    def __init__(
        self,
        cluster: Cluster,
        chat: Chat,
        *,
        token: str,
        heartbeat_s: float,
    ) -> None:
        self.cluster = cluster
        self.chat = chat
        self.store = chat.store
        self._token = token
        self._mirrors: dict[uuid.UUID, Mirror] = {}
        self._opening: dict[uuid.UUID, anyio.Lock] = {}
        self._tg: TaskGroup | None = None
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, read=3 * heartbeat_s + 5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )

    def bind(self, tg: TaskGroup) -> None:
        """Run the pumps in ``tg`` (the app lifespan's task group)."""
        self._tg = tg

    def __len__(self) -> int:
        return len(self._mirrors)

    async def aclose(self) -> None:
        await self._http.aclose()

    def drop_all(self) -> None:
        """End every mirror's subscribers (at shutdown: their clients go elsewhere)."""
        for mirror in self._mirrors.values():
            mirror.dropped = True

    async def mirror(self, mid: uuid.UUID) -> Mirror | None:
        """The mirror of ``mid``, opening its upstream if there is none; None when the
        message cannot be followed that way (its owner serves no internal route, is this
        instance, is dead, or the row is not generating): the caller reads the store."""
        current = self._mirrors.get(mid)
        if current is not None and not current.dropped:
            return current
        lock = self._opening.setdefault(mid, anyio.Lock())
        try:
            async with lock:
                current = self._mirrors.get(mid)
                if current is not None and not current.dropped:
                    return current
                return await self._open(mid)
        finally:
            if not lock.statistics().tasks_waiting and self._opening.get(mid) is lock:
                del self._opening[mid]

    async def _open(self, mid: uuid.UUID) -> Mirror | None:
        if self._tg is None:
            return None
        connected = await self._connect(mid)
        if connected is None:
            return None
        upstream, init = connected
        try:
            blocks = decode_blocks(init.blocks)
        except (msgspec.ValidationError, msgspec.DecodeError):
            await upstream.aclose()
            raise
        recovering = upstream.buffered_recovering()
        mirror = Mirror(LiveStream(mid, blocks=blocks, seq=init.seq, recovering=recovering))
        self._mirrors[mid] = mirror
        self._tg.start_soon(self._pump, mirror, upstream, name=f"mirror {mid}")
        return mirror

    async def _connect(self, mid: uuid.UUID) -> tuple[_Upstream, _Init] | None:
        """An upstream to the owner of ``mid``, past its init frame; None if there is no
        living owner elsewhere that serves one."""
        owner = await self.cluster.owner(mid)
        if (
            owner is None
            or owner.status != "generating"
            or not owner.alive
            or owner.internal_url is None
            or owner.instance_id == self.cluster.instance_id
        ):
            return None
        url = f"{owner.internal_url}/internal/v1/messages/{mid}/stream"
        request = self._http.build_request("GET", url, headers={INTERNAL_HEADER: self._token})
        for pause in (0.02, 0.1, 0.3, None):
            try:
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                log.info("owner not reachable", url=url, error=str(exc))
                return None
            if response.status_code != 404 or pause is None:
                break
            # The owner writes a turn's lease before it opens the turn's stream: a follower
            # can come in between. Anything else answered 404 is for the store to settle.
            await response.aclose()
            await anyio.sleep(pause)
        upstream = _Upstream(response)
        try:
            if response.status_code != 200:
                await upstream.aclose()
                return None
            first = await upstream.next()
        except httpx.HTTPError:
            await upstream.aclose()
            return None
        if first is None or first[0] != b"init":
            await upstream.aclose()
            return None
        return upstream, msgspec.json.decode(first[2], type=_Init)

    # -- the pump ---------------------------------------------------------------------------

    async def _pump(self, mirror: Mirror, upstream: _Upstream) -> None:
        mid = mirror.stream.message_id
        try:
            while True:
                try:
                    ended = await self._relay(mirror, upstream)
                except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.info("upstream broke", message_id=str(mid), error=str(exc))
                    ended = False
                except StreamProtocolError as exc:
                    log.warning("upstream sent an invalid event", error=str(exc))
                    mirror.dropped = True
                    ended = True
                except Exception:
                    # A bug in one mirror must not take the server down: its subscribers
                    # reconnect and get a fresh init.
                    log.exception("mirror failed", message_id=str(mid))
                    mirror.dropped = True
                    ended = True
                await upstream.aclose()
                if ended or mirror.dropped:
                    return
                try:
                    reconnected = await self._recover(mirror)
                except Exception:
                    log.exception("mirror could not recover", message_id=str(mid))
                    mirror.dropped = True
                    return
                if reconnected is None:
                    return
                upstream = reconnected
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            if self._mirrors.get(mid) is mirror:
                del self._mirrors[mid]

    async def _relay(self, mirror: Mirror, upstream: _Upstream) -> bool:
        """Publish upstream frames into the mirror; True once it finished (or was dropped),
        False when the upstream ended before ``done``."""
        stream = mirror.stream
        unread_since: float | None = None
        while True:
            frame = await upstream.next()
            if frame is None:
                return False
            name, seq, data = frame
            if stream.subscriber_count == 0:
                now = anyio.current_time()
                unread_since = unread_since or now
                if now - unread_since > UNREAD_S:
                    mirror.dropped = True  # nobody reads it: a later subscriber reopens
                    return True
            else:
                unread_since = None
            if not name:
                continue  # a ping
            if name == b"recovering":
                # The owner continues a row whose process died (after a reconnect's init).
                stream.mark_recovering(_recovering_attempt(data))
                continue
            if name == b"init":
                # The owner resynchronised this reader (it fell out of the ring): fine if
                # nothing was missed, else the mirror cannot continue.
                if msgspec.json.decode(data, type=_Init).seq != stream.seq:
                    mirror.dropped = True
                    return True
                continue
            if seq != stream.seq + 1:
                mirror.dropped = True
                return True
            stream.publish(decode_event(data))
            if stream.finished:
                return True

    async def _recover(self, mirror: Mirror) -> _Upstream | None:
        """After an upstream broke before ``done``: finish the mirror from the store if the
        row ended or its owner died, reconnect if the owner lives; None when finished."""
        stream = mirror.stream
        mid = stream.message_id
        with anyio.move_on_after(RECONNECT_S):
            while True:
                owner = await self.cluster.owner(mid)
                if owner is None or owner.status != "generating":
                    stream.finish(done_for(await self.store.get_message(mid)))
                    return None
                if not owner.alive:
                    log.info("owner died; taking the row over", message_id=str(mid))
                    row = await self.store.get_message(mid)
                    if row is not None:
                        await self.chat.repair_if_orphan(row, "mirror")
                    # The mirror may show events its owner never stored: rather than end
                    # on them, its readers end here and reconnect, to the stored
                    # checkpoint and whatever follows it now (continued, or interrupted).
                    mirror.dropped = True
                    return None
                connected = await self._connect(mid)
                if connected is not None:
                    upstream, init = connected
                    if init.seq == stream.seq:
                        return upstream
                    await upstream.aclose()
                    break
                await anyio.sleep(0.2)
        mirror.dropped = True
        return None


async def mirror_frames(mirror: Mirror, heartbeat_s: float) -> AsyncIterator[bytes]:
    """One subscriber's SSE frames from a mirror, with pings while idle; ends without
    ``done`` if the mirror is dropped (the client reconnects)."""
    sub = mirror.stream.subscribe()
    step = min(heartbeat_s, 1.0)
    idle = 0.0
    try:
        while True:
            try:
                frame = await sub.next_frame(step)
            except StopAsyncIteration:
                return
            if frame is not None:
                idle = 0.0
                yield frame
                continue
            if mirror.dropped:
                return
            idle += step
            if idle >= heartbeat_s:
                idle = 0.0
                yield PING
    finally:
        sub.close()
