"""Following a generation that runs on another instance: mirrors fed by one relay per owner.

General layout::

    Follower                  one per instance; its pumps run in the app's task group
      _Peer                   one relay session to one owner instance (turnlog.relay): ONE
                              connection carrying every stream this instance follows there
        Mirror                a local LiveStream of one message, fed by the relay; every
                              local subscriber of that message reads the mirror

A subscriber on instance B of a message generating on A reads B's mirror exactly as it would
read A's stream (streams.py): ``init`` at the mirror's current K, then every frame after K,
then ``done``. The mirror starts from the snapshot A answers when B adds the message to its
relay session, and publishes each relayed frame through the same reducer, passing A's bytes
on unchanged, so its seq numbers are A's: a frame whose seq is not the mirror's next means
a gap, and the mirror is dropped (see below) rather than ever showing a duplicate or
skipping one.

Failure cases (docs/deployment.md has the whole table):

* The relay breaks: each of its mirrors asks PostgreSQL. Row ended -> ``done`` with the
  stored status. Owner dead (its liveness lock is free) -> the row is taken over here
  (continued, or interrupted: turnlog.recovery) and the mirror is dropped, so that its
  readers reconnect to the stored checkpoint rather than keep text that was never stored;
  a subscriber is never left waiting. Owner alive -> follow it again on a new session; its
  snapshot must be at the mirror's seq, else the mirror is dropped.
* Dropped (a gap, the owner handed the generation over, or nobody reads it any more): the
  mirror's stream is abandoned, so its subscribers' responses end without ``done``; their
  clients reconnect (``Last-Event-ID``) and get a fresh init, as after any network break.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import httpx
import msgspec
import structlog
from anyio.abc import TaskGroup
from turnlog_reducer import StreamProtocolError, decode_blocks, decode_event

from turnlog import aio
from turnlog.cluster import INTERNAL_HEADER, Cluster
from turnlog.commands import Chat
from turnlog.relay import RecordReader, Snapshot, frame_data
from turnlog.streams import LiveStream, StreamFinished, done_for

log = structlog.get_logger("turnlog.follow")

# A mirror nobody has read for this long is dropped (a later subscriber follows again).
UNREAD_S = 5.0
# How long a mirror keeps trying to follow a living owner again before it is dropped.
RECONNECT_S = 10.0


class Mirror:
    """A local copy of a stream that runs elsewhere."""

    __slots__ = ("peer", "stream", "unread_since")

    def __init__(self, stream: LiveStream) -> None:
        self.stream = stream
        self.peer: _Peer | None = None
        self.unread_since: float | None = None

    @property
    def dropped(self) -> bool:
        """Whether the mirror was dropped: its readers end without ``done``."""
        return self.stream.abandoned


class _Peer:
    """One relay session to one owner instance, and the mirrors it feeds."""

    def __init__(self, url: str, session_id: uuid.UUID, response: httpx.Response) -> None:
        self.url = url
        self.session_id = session_id
        self.response = response
        self.mirrors: dict[bytes, Mirror] = {}
        # Records of messages being added: they may come before the answer to the add.
        self.pending: dict[bytes, list[tuple[int, bytes]]] = {}
        # Messages to add in the next request (Follower._send_adds), and whether one runs.
        self.adding: dict[uuid.UUID, asyncio.Future[Snapshot | None]] = {}
        self.sending = False
        self.closed = False


class _Gap(Exception):
    """The owner's snapshot is not where the mirror is: the mirror cannot go on."""


class Follower:
    """Mirrors of messages generating on other instances, one relay per instance."""

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
        self._headers = {INTERNAL_HEADER: token}
        self._mirrors: dict[uuid.UUID, Mirror] = {}
        self._opening: dict[uuid.UUID, anyio.Lock] = {}
        self._peers: dict[str, _Peer] = {}
        self._connecting: dict[str, anyio.Lock] = {}
        self._tg: TaskGroup | None = None
        # The relays, one long response each: a relay pings every heartbeat, so three
        # missed ones mean the owner is gone.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, read=3 * heartbeat_s + 5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        # Adding and removing messages: short requests on a few kept-alive connections.
        self._control = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0), limits=httpx.Limits(max_connections=8)
        )

    def bind(self, tg: TaskGroup) -> None:
        """Run the pumps in ``tg`` (the app lifespan's task group)."""
        self._tg = tg

    def __len__(self) -> int:
        return len(self._mirrors)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._control.aclose()

    def drop_all(self) -> None:
        """End every mirror's subscribers (at shutdown: their clients go elsewhere)."""
        for mirror in list(self._mirrors.values()):
            self._drop(mirror)

    async def mirror(self, mid: uuid.UUID) -> Mirror | None:
        """The mirror of ``mid``, following it if there is none; None when the message
        cannot be followed that way (its owner serves no internal route, is this instance,
        is dead, or the row is not generating): the caller reads the store."""
        current = self._mirrors.get(mid)
        if current is not None and not current.dropped:
            return current
        lock = self._opening.setdefault(mid, anyio.Lock())
        try:
            async with lock:
                current = self._mirrors.get(mid)
                if current is not None and not current.dropped:
                    return current
                url = await self._owner_url(mid)
                if url is None or self._tg is None:
                    return None
                try:
                    mirror = await self._follow(url, mid, None)
                except _Gap:  # pragma: no cover - a new mirror starts at the snapshot
                    return None
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    # An owner's snapshot this instance cannot read: follow the store.
                    log.warning("unreadable relay snapshot", message_id=str(mid), error=str(exc))
                    return None
                if mirror is not None:
                    self._mirrors[mid] = mirror
                return mirror
        finally:
            if not lock.statistics().tasks_waiting and self._opening.get(mid) is lock:
                del self._opening[mid]

    async def _owner_url(self, mid: uuid.UUID) -> str | None:
        """The internal URL of the living instance, other than this one, that runs ``mid``."""
        owner = await self.cluster.owner(mid)
        if (
            owner is None
            or owner.status != "generating"
            or not owner.alive
            or owner.internal_url is None
            or owner.instance_id == self.cluster.instance_id
        ):
            return None
        return owner.internal_url

    # -- relay sessions -----------------------------------------------------------------

    async def _peer(self, url: str) -> _Peer | None:
        """The open relay session to ``url``, opening one if there is none."""
        peer = self._peers.get(url)
        if peer is not None and not peer.closed:
            return peer
        lock = self._connecting.setdefault(url, anyio.Lock())
        try:
            async with lock:
                return await self._connect(url)
        finally:
            if not lock.statistics().tasks_waiting and self._connecting.get(url) is lock:
                del self._connecting[url]

    async def _connect(self, url: str) -> _Peer | None:
        """A relay session to ``url`` (under ``_peer``'s lock for it): the one open, or a
        new one whose pump runs in the task group."""
        peer = self._peers.get(url)
        if peer is not None and not peer.closed:
            return peer
        session_id = uuid.uuid4()
        request = self._http.build_request(
            "GET", f"{url}/internal/v1/relay/{session_id}", headers=self._headers
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.info("owner not reachable", url=url, error=str(exc))
            return None
        if response.status_code != 200 or self._tg is None:
            await response.aclose()
            log.info("owner serves no relay", url=url, status=response.status_code)
            return None
        peer = self._peers[url] = _Peer(url, session_id, response)
        self._tg.start_soon(self._pump, peer, name=f"relay {url}")
        return peer

    async def _follow(self, url: str, mid: uuid.UUID, mirror: Mirror | None) -> Mirror | None:
        """Add ``mid`` to the relay session to ``url``: a new mirror, or ``mirror`` going on
        (raises ``_Gap`` if the owner is past it); None if the owner does not relay it."""
        peer = await self._peer(url)
        if peer is None:
            return None
        key = mid.bytes
        peer.pending[key] = []
        try:
            snapshot = await self._add(peer, mid)
        finally:
            pending = peer.pending.pop(key, [])
        if snapshot is None or peer.closed:
            return None  # (a session that broke meanwhile may have lost frames)
        if mirror is None:
            blocks = decode_blocks(snapshot.blocks)
            stream = LiveStream(
                mid, blocks=blocks, seq=snapshot.seq, recovering=snapshot.recovering
            )
            mirror = Mirror(stream)
        elif snapshot.seq != mirror.stream.seq:
            self._tg_start(self._unfollow, peer, mid)
            raise _Gap(f"owner at {snapshot.seq}, mirror at {mirror.stream.seq}")
        elif snapshot.recovering is not None:
            mirror.stream.mark_recovering(snapshot.recovering)
        mirror.peer = peer
        peer.mirrors[key] = mirror
        for seq, frame in pending:
            self._deliver(mirror, seq, frame)
        return mirror

    async def _add(self, peer: _Peer, mid: uuid.UUID) -> Snapshot | None:
        """The owner's snapshot of ``mid`` as it adds it to the session; None if it does
        not run there (or the owner cannot be reached)."""
        for pause in (0.02, 0.1, 0.3, None):
            waiting = peer.adding.get(mid)
            if waiting is None:
                waiting = peer.adding[mid] = asyncio.get_running_loop().create_future()
            if not peer.sending:
                peer.sending = True
                self._tg_start(self._send_adds, peer)
            snapshot = await asyncio.shield(waiting)
            if snapshot is not None or pause is None or peer.closed:
                return snapshot
            # The owner writes a turn's lease before it opens the turn's stream: a follower
            # can come in between. Anything else not found there is for the store to settle.
            await anyio.sleep(pause)
        return None  # pragma: no cover - the loop returns

    async def _send_adds(self, peer: _Peer) -> None:
        """Ask the owner for every message waiting to be added, in one request per round:
        a burst of subscribers (each the first on this instance of its message) costs the
        owner a few requests, not one each."""
        try:
            while peer.adding and not peer.closed:
                batch, peer.adding = peer.adding, {}
                answers = await self._request_adds(peer, list(batch))
                for waiting, answer in zip(batch.values(), answers, strict=True):
                    if not waiting.done():
                        waiting.set_result(answer)
        finally:
            peer.sending = False
            if peer.closed:
                batch, peer.adding = peer.adding, {}
                for waiting in batch.values():
                    if not waiting.done():
                        waiting.set_result(None)

    async def _request_adds(self, peer: _Peer, mids: list[uuid.UUID]) -> list[Snapshot | None]:
        try:
            response = await self._control.post(
                f"{peer.url}/internal/v1/relay/{peer.session_id}/messages",
                content=msgspec.json.encode({"messages": mids}),
                headers=self._headers,
            )
            if response.status_code == 200:
                return msgspec.json.decode(response.content, type=list[Snapshot | None])
            log.info("owner refused a relay add", url=peer.url, status=response.status_code)
        except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.info("owner not reachable", url=peer.url, error=str(exc))
        return [None] * len(mids)

    async def _unfollow(self, peer: _Peer, mid: uuid.UUID) -> None:
        if peer.closed:
            return
        # A broken session or a gone owner sends nothing more either way.
        with contextlib.suppress(httpx.HTTPError):
            url = f"{peer.url}/internal/v1/relay/{peer.session_id}/messages/{mid}"
            await self._control.delete(url, headers=self._headers)

    def _tg_start(self, func: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
        if self._tg is not None:
            self._tg.start_soon(func, *args)

    # -- the pump ---------------------------------------------------------------------

    async def _pump(self, peer: _Peer) -> None:
        """Hand every relayed frame to its mirror until the session ends; then each mirror
        still open finds out why (``_recover``)."""
        reader = RecordReader()
        try:
            async for chunk in peer.response.aiter_raw():
                for key, seq, frame in reader.feed(chunk):
                    mirror = peer.mirrors.get(key)
                    if mirror is not None:
                        self._deliver(mirror, seq, frame)
                        continue
                    pending = peer.pending.get(key)
                    if pending is not None:
                        pending.append((seq, frame))
        except httpx.HTTPError as exc:
            log.info("relay broke", url=peer.url, error=str(exc))
        except Exception:
            # A bug must not take the server down: the mirrors recover or are dropped.
            log.exception("relay failed", url=peer.url)
        finally:
            peer.closed = True
            if self._peers.get(peer.url) is peer:
                del self._peers[peer.url]
            with anyio.CancelScope(shield=True):
                await peer.response.aclose()
            mirrors = list(peer.mirrors.values())
            peer.mirrors.clear()
            for mirror in mirrors:
                if not mirror.stream.finished:
                    self._tg_start(self._recover, mirror)

    def _deliver(self, mirror: Mirror, seq: int, frame: bytes) -> None:
        """Publish one relayed frame into ``mirror`` (runs once per frame per mirror)."""
        stream = mirror.stream
        if seq != stream.seq + 1:
            if seq:
                log.warning("relay gap", message_id=str(stream.message_id), seq=seq)
            self._drop(mirror)  # seq 0: the owner handed the generation over
            return
        if stream.subscriber_count == 0:
            now = aio.current_time()
            if mirror.unread_since is None:
                mirror.unread_since = now
            elif now - mirror.unread_since > UNREAD_S:
                peer = mirror.peer
                self._drop(mirror)  # nobody reads it: a later subscriber follows again
                if peer is not None:
                    self._tg_start(self._unfollow, peer, stream.message_id)
                return
        else:
            mirror.unread_since = None
        try:
            stream.publish_encoded(decode_event(frame_data(frame)), frame)
        except (StreamProtocolError, StreamFinished, msgspec.DecodeError, ValueError) as exc:
            log.warning("relay sent an invalid event", error=str(exc))
            self._drop(mirror)
            return
        if stream.finished:
            self._forget(mirror)

    def _forget(self, mirror: Mirror) -> None:
        mid = mirror.stream.message_id
        if mirror.peer is not None and mirror.peer.mirrors.get(mid.bytes) is mirror:
            del mirror.peer.mirrors[mid.bytes]
        if self._mirrors.get(mid) is mirror:
            del self._mirrors[mid]

    def _drop(self, mirror: Mirror) -> None:
        """End ``mirror``'s readers without ``done`` (they reconnect) and forget it."""
        self._forget(mirror)
        mirror.stream.abandon()

    async def _recover(self, mirror: Mirror) -> None:
        """After its relay broke: finish ``mirror`` from the store if the row ended or its
        owner died, follow it again if the owner lives; else drop it."""
        stream = mirror.stream
        mid = stream.message_id
        try:
            with anyio.move_on_after(RECONNECT_S):
                while not stream.finished:
                    owner = await self.cluster.owner(mid)
                    if owner is None or owner.status != "generating":
                        stream.finish(done_for(await self.store.get_message(mid)))
                        self._forget(mirror)
                        return
                    if not owner.alive:
                        log.info("owner died; taking the row over", message_id=str(mid))
                        row = await self.store.get_message(mid)
                        if row is not None:
                            await self.chat.repair_if_orphan(row, "mirror")
                        # The mirror may show events its owner never stored: rather than
                        # end on them, its readers end here and reconnect, to the stored
                        # checkpoint and whatever follows it now (continued, or
                        # interrupted).
                        break
                    url = owner.internal_url
                    if url is None or owner.instance_id == self.cluster.instance_id:
                        break  # it runs here now (or cannot be followed): readers reconnect
                    if await self._follow(url, mid, mirror) is not None:
                        return
                    await anyio.sleep(0.2)
        except _Gap as exc:
            log.info("mirror cannot go on", message_id=str(mid), reason=str(exc))
        except Exception:
            log.exception("mirror could not recover", message_id=str(mid))
        self._drop(mirror)
