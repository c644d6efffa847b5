"""The client shell: the DEALER socket to the scheduler, its I/O thread, and a
`ClientState`.

    user threads ── hold / drop / request / send ──▶ ClientState ──outbox──┐
        (under futures.LOCK, then a wake-up)             ▲                  ▼
    user threads ◀── Done: events, callbacks ─┐          │    IOLoop thread ──DEALER──▶
                 ◀── Resolve/Reject: answers ─┴── ClientState.handle ◀──  scheduler

(A coroutine of an asynchronous client stands where a user thread does: see `waits`.)

Every call into the state machine is made under `futures.LOCK`, from whichever thread;
its instructions are carried out after the lock is let go (done callbacks run user
code).  Only the I/O thread touches the socket: other threads queue messages in the
state machine and wake the loop, which sends what has gathered at its next flush.  (A
message goes into the state's outbox under the lock, never into a list a flush has
already taken, so none is lost.)

Small results come straight from the workers that computed them, on one DEALER per
worker to its peer socket (the actors' security: the cluster's key guards it, CURVE
when encrypted, every message signed), opened on the I/O thread when the state machine
says `Connect`: the first time a result could have come straight from that worker
(see state.py).  Lazily, because a client needs only the workers computing for it, and
a cluster of a thousand workers is not a thousand connections per client; the price
is that a worker's first result for this client takes the long way.

After each ZeroMQ handshake the shell says "hello"; the answer tells the scheduler's
epoch and identity (see protocol.py), which sign and address every message after it.

Requests that expect an answer wait on a `concurrent.futures.Future`, the token the
state machine hands back with the answer.  What waits is written once, as operations
(`request_op`, `gather_states_op`...: generators that yield their waits, see `waits`),
which the blocking and the asynchronous client run with their own driver.  Gathers go
through here too: values are loaded in the thread that asked for them (for the
Executor's futures, which nobody waits on, on the I/O thread).  Large values a gather
asks for may come streamed through the scheduler's relay (bulk.py), downloaded by that
same thread (for a coroutine, by a thread of its loop's executor, so that the loop runs
on); when they do not come through, the gather is asked again, for values on the
socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import itertools
import os
import threading
import time
import warnings

import zmq
from zmq.utils.monitor import parse_monitor_message

from .. import bulk, messages
from ..addresses import host_of
from ..comm import Handshake, IOLoop, RejectionLog, connect_dealer, new_id, send
from ..errors import ClosedClientError
from ..log import logger
from ..protocol import MessageTooLarge, ProtocolError, Session
from .futures import (LOCK, KeyDone, exception_of, load_all, raise_error, set_exception,
                      take_waiters, wake, when_done)
from .state import (Close, ClientState, Connect, Done, FINISHED, Reject, Reset, Resolve,
                    Warn)
from .waits import Answer, Call, KeptAnswer


ACTOR_BATCH = 256         # actor calls to one worker in one message, at most


class DataLost(Exception):
    """A key in memory was gone when gathered: it is being computed again."""


class ClientShell:
    """The connection of a `Client` to its scheduler.

    ``owner``: the Client, which Futures found in gathered values join;
    ``on_scheduler_closing``: what to call when the scheduler shuts down;
    ``paused_warning``: seconds a worker may stay paused before a warning."""

    def __init__(self, owner, address, security, max_message_bytes,
                 on_scheduler_closing, paused_warning=None, name=None):
        self.owner = owner
        self.address = address
        self.on_scheduler_closing = on_scheduler_closing
        # The ZeroMQ identity (at most 255 bytes): the client's name, cut short.
        self.id = new_id("client" if name is None else f"client-{str(name)[:40]}")
        # The cap on what this client receives; gathers ask for no more than that.
        self.session = Session(security.key, self.id, max_message_bytes=max_message_bytes)
        self.security = security
        self.actor_sockets = {}         # {worker address: (DEALER, monitor)} (I/O thread)
        self.actor_pending = {}         # {request id: (address, cf.Future)} (I/O thread)
        self.actor_lost = set()         # workers whose connection dropped: actors gone
        self.actor_ids = itertools.count()
        self.actor_outbox = {}          # {worker address: [actor-call]} (I/O thread)
        self.result_sockets = {}        # {worker address: (DEALER, monitor)} (I/O thread)
        self.direct_results = 0         # small results that came straight (a figure)
        self.uploads = bulk.Pool("dask-ipy-upload")     # scattered values streaming
        # Futures' done callbacks, in order, on a thread that ends when none is left
        self.callbacks = bulk.Pool("dask-ipy-callbacks", size=1)
        self.state = ClientState(address, paused_warning)
        self.monitor_callbacks = []
        self.topic_handlers = {}        # {topic: handler of the workers' events}
        self.topic_loops = {}           # {topic: the event loop it was subscribed in}
        self.last_snapshot = None
        self.connected = threading.Event()
        self.from_scheduler = messages.handlers(messages.SCHEDULER, messages.CLIENT, self,
                                                self.FROM_SCHEDULER, self._to_state)
        self.loop = IOLoop("dask-ipy-client")
        self.handshake = Handshake()
        self.rejections = RejectionLog(self.loop, "client: rejected a message")
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        self.socket = connect_dealer(self.loop.context, security, self.id, address,
                                     events=events)
        self.monitor_socket = self.socket.get_monitor_socket(events)
        self.loop.add_socket(self.socket, self._on_frames)
        self.loop.add_socket(self.monitor_socket, self._on_socket_event)
        self.loop.add_flush(self._flush)
        self.loop.add_flush(self._flush_actor_calls)
        self.loop.start()

    @property
    def status(self):
        return self.state.status

    # ---------------------------------------------------------------- the state machine

    def _call(self, method, *args):
        """``method(*args)`` of the state machine under the lock, then its
        instructions; returns nothing."""
        with LOCK:
            out = method(*args)
            if not out:
                return
            after = self._take(out)
        self._carry_out(after)

    def _take(self, out):
        """Under the lock: what waits on done keys (taken off them), and rearmed
        waits for keys being computed again."""
        after = []
        for inst in out:
            kind = type(inst)
            if kind is Done:
                after.append((inst, take_waiters(inst.state)))
            elif kind is Reset:
                if inst.state.event is not None:
                    inst.state.event.clear()
            else:
                after.append((inst, None))
        return after

    def _carry_out(self, after):
        for inst, waiters in after:
            kind = type(inst)
            if kind is Done:
                if waiters[0] is not None or waiters[1]:
                    wake(inst.state, *waiters)
            elif kind is Resolve:
                if not inst.token.done():
                    try:
                        inst.token.set_result(inst.value)
                    except cf.InvalidStateError:
                        pass
            elif kind is Reject:
                set_exception(inst.token, inst.error)
            elif kind is Close:
                logger.info("client: the scheduler at %s shuts down", self.address)
                self.on_scheduler_closing()
            elif kind is Warn:
                warnings.warn(inst.warning, stacklevel=2)
            elif kind is Connect:
                self.loop.call_soon(self._connect_worker, inst.address)

    def _wake_loop(self):
        self.loop.wake()

    # ---------------------------------------------------------------- keys (any thread)

    def hold(self, key, state=None, inform=False):
        """Count a new holder of ``key`` (a Future); returns its shared state."""
        with LOCK:
            st = self.state.hold(key, state, inform)
        if inform:
            self._wake_loop()
        return st

    def hold_many(self, keys):
        """Hold ``keys`` without Futures (for `get`); {key: state}."""
        with LOCK:
            return self.state.hold_many(keys)

    def hold_graph(self, keys):
        """`hold_many` for a graph's wanted ``keys``, and those of them whose values
        must come through the scheduler (`ClientState.indirect_among`)."""
        with LOCK:
            return self.state.hold_many(keys), self.state.indirect_among(keys)

    def drop(self, keys):
        """Holders of ``keys`` are gone (any thread, the garbage collector's too)."""
        with LOCK:
            gone = self.state.drop(keys)
            out = self.state.end_gathers(gone) if gone and self.state.by_key else None
            after = self._take(out) if out else None
        if gone:
            self._wake_loop()
        if after:
            self._carry_out(after)

    def released(self, st):
        """A Future was released: its state is cancelled if nobody holds its key."""
        self._call(self.state.released, st)

    def is_held(self, key):
        with LOCK:
            return self.state.is_held(key)

    def was_cancelled(self, key):
        with LOCK:
            return self.state.was_cancelled(key)

    def lose(self, keys):
        """Cancel here keys held for a graph that needs a key cancelled here."""
        self._call(self.state.lose, keys)

    def held(self):
        with LOCK:
            return list(self.state.futures)

    def held_states(self):
        """({key: FutureState}, {key: how many hold it}) of the keys held now."""
        with LOCK:
            return dict(self.state.futures), dict(self.state.refcount)

    def states(self, keys):
        """The states of those ``keys`` that are held."""
        with LOCK:
            return [st for st in map(self.state.futures.get, keys) if st is not None]

    def finished(self, done):
        """``done``: [(state, type name)] known to be in memory."""
        self._call(self.state.finish, done)

    def learn(self, reports):
        """How keys of Futures just loaded had ended (`ClientState.learn`)."""
        if reports:
            self._call(self.state.learn, reports)

    def cancel(self, states, keys, force=False, reason=None, msg=None):
        """Cancel ``keys`` here at once (``reason``, ``msg``: why, or None); a
        concurrent.futures.Future answered once the scheduler has cancelled them
        too."""
        return self._ask(self.state.cancel, states, keys, force, reason, msg)

    def retry(self, keys):
        """Make erred ``keys`` pending here at once; a concurrent.futures.Future
        answered once the scheduler has them again."""
        return self._ask(self.state.retry, keys)

    def _ask(self, method, *args):
        fut = cf.Future()
        self._call(method, *args, fut)
        self._wake_loop()
        return fut

    # ---------------------------------------------------------------- messages

    def wait_for(self, future):
        """What is sent from now on leaves once ``future`` is done: another
        client's answer from the scheduler, which then has that client's earlier
        messages."""
        self._call(self.state.wait_for, future)

        def done(_):
            self._call(self.state.waited, future)
            self._wake_loop()
        future.add_done_callback(done)

    def send(self, msg):
        """Queue a message for the scheduler (any thread)."""
        with LOCK:
            self.state.send(msg)
        self._wake_loop()

    def check_open(self):
        if self.state.status == "closed":
            raise ClosedClientError("this Client is closed")

    def request_future(self, msg, welcome=False):
        """Send ``msg``; a concurrent.futures.Future of its answer."""
        fut = cf.Future()
        self._call(self.state.request, msg, fut, welcome)
        self._wake_loop()
        return fut

    def request_op(self, msg, timeout=None, welcome=False):
        """Send ``msg`` and wait for its answer (an operation, see `waits`)."""
        self.check_open()
        fut = self.request_future(msg, welcome)
        return (yield Answer(fut, timeout, f"{msg['op']!r} from the scheduler at "
                                           f"{self.address}"))

    def _gather_future(self, msg):
        """Send the gather ``msg`` through the state machine, which answers it itself
        when the values all came straight from their workers; a Future of the
        answer."""
        fut = cf.Future()
        self._call(self.state.gather, msg, fut)
        if not fut.done():
            self._wake_loop()
        return fut

    def scatter_op(self, msg, keys, timeout=None):
        """Send a scatter of ``keys``; done once all of them are stored."""
        fut = cf.Future()
        self._call(self.state.scatter, msg, keys, fut)
        self._wake_loop()
        yield Answer(fut, timeout, f"'scatter' from the scheduler at {self.address}")

    def scatter_streams_op(self, blobs, broadcast, workers, timeout=None):
        """Stream the large ones of ``blobs`` through the scheduler's relay, each
        signed for the worker the scheduler chose for it ("scatter-targets"); the
        uploads wait at the relay for their workers.  Returns their announcements
        for "scatter", or None: no relay, nothing large, or the relay out of reach
        (found at once: every upload connects before anything is announced)."""
        large = {k: b for k, b in blobs.items() if b.nbytes >= bulk.BULK_FROM}
        with LOCK:
            port = self.state.relay_port
        if not large or port is None:
            return None
        targets = yield from self.request_op({"op": "scatter-targets",
                                              "keys": list(large), "broadcast": broadcast,
                                              "workers": workers}, timeout=timeout)
        if not targets:
            return None
        host = host_of(self.address)
        streams, uploads = [], []
        try:
            for key, wids in targets.items():
                for wid in wids:
                    ticket = os.urandom(bulk.TICKET_BYTES)
                    header, payload = self.session.encode(
                        [{"op": "data", "ticket": ticket, "data": {key: large[key]}}],
                        wid, frame_limit=None)
                    uploads.append((bulk.open_upload(host, port, ticket, bulk.IO_TIMEOUT,
                                                     5.0), header, payload))
                    streams.append({"ticket": ticket, "keys": [key], "worker": wid,
                                    "sizes": bulk.stream_sizes(header, payload)})
        except OSError as e:
            logger.warning("client: the scheduler's relay is out of reach (%s); "
                           "scattering over ZeroMQ", e)
            for sock, _, _ in uploads:
                sock.close()
            self.streams_off()
            return None
        for sock, header, payload in uploads:
            self.uploads.submit(self._upload, sock, header, payload)
        return streams

    def _upload(self, sock, header, payload):
        try:
            bulk.upload_on(sock, self.session, header, payload, self.uploads)
        except OSError as e:
            # The worker's download fails too, and the scatter with it.
            logger.warning("client: a scattered value did not stream to the relay: %s", e)

    def streams_off(self):
        """No more streams until a "welcome" names the relay again."""
        with LOCK:
            self.state.relay_port = None

    def start(self):
        """Registered: False if this client was closed meanwhile."""
        with LOCK:
            return self.state.start()

    # ---------------------------------------------------------------- gathering

    def gather_op(self, keys, deadline=None, wait=False):
        """Values of ``keys``; with ``wait`` the scheduler answers once they are all
        done.  Raises DataLost if a key is missing (erred, cancelled, or lost and
        being computed again)."""
        self.check_open()
        with LOCK:
            msg = self.state.gather_message(keys, wait, self.session.max_message_bytes)
        fut = self._gather_future(dict(msg))
        reply = yield Answer(fut, _remaining(deadline),
                             f"'gather' from the scheduler at {self.address}")
        if reply.get("streams"):
            try:
                reply["data"].update((yield Call(self._receive, reply["streams"])))
            except (OSError, ProtocolError) as e:
                logger.warning("client: large values did not come through the "
                               "scheduler's relay (%s); asking for them over ZeroMQ", e)
                with LOCK:
                    retry = self.state.streams_failed(msg, reply["streams"])
                reply = yield from self.request_op(retry, timeout=_remaining(deadline))
        return self._unpack(reply)

    def _receive(self, streams):
        """{key: Serialized} of the values streamed for this client, from the relay."""
        with LOCK:
            port = self.state.relay_port
        if port is None:
            raise OSError("no relay known")
        return bulk.receive(self.session, host_of(self.address), port, streams)

    def _unpack(self, reply):
        if reply["errors"]:
            key, info = next(iter(reply["errors"].items()))
            if info.get("type") == "MessageTooLarge":
                raise MessageTooLarge(info["text"])
            raise TypeError(info["text"])
        if reply["missing"]:
            raise DataLost(reply["missing"])
        return load_all(reply["data"], self.owner)

    def gather_states_op(self, states, errors="raise", timeout=None):
        """Values by key.  A single request waits and fetches: the scheduler answers
        as soon as the last key is done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            bad = [st for st in states if st.done() and st.status != FINISHED]
            if bad and errors == "raise":
                raise_error(bad[0])
            keys = [st.key for st in states if st not in bad]
            try:
                values = (yield from self.gather_op(keys, deadline, wait=True)) \
                    if keys else {}
            except TimeoutError:
                pending = [st.key for st in states if not st.done()]
                if not pending:
                    raise                   # done, and the answer is what is late
                more = f" and {len(pending) - 1} more" if len(pending) > 1 else ""
                raise TimeoutError(f"{pending[0]!r}{more} not done after {timeout} s") \
                    from None
            except DataLost as e:
                for st in self.states(e.args[0]):
                    if not (yield KeyDone(st, _remaining(deadline))):
                        raise TimeoutError(f"{st.key!r} not done after {timeout} s") from None
                continue
            for st in bad:
                values[st.key] = exception_of(st)
            return values

    def gather_async(self, keys, callback):
        """Fetch values without blocking the caller; ``callback(("ok", values))`` or
        ``callback(("error", exception))`` runs when they arrive."""
        fut = self._gather_future({"op": "gather", "keys": list(keys),
                                   "max_bytes": self.session.max_message_bytes})

        def done(f):
            try:
                callback(("ok", self._unpack(f.result())))
            except DataLost:
                waiting = self.states(keys)
                if waiting:
                    when_done(waiting[0], lambda: self.gather_async(keys, callback))
                else:
                    callback(("error", KeyError(keys)))
            except BaseException as e:
                callback(("error", e))
        fut.add_done_callback(done)

    # ---------------------------------------------------------------- the monitor

    def subscribe_monitor(self, callback):
        with LOCK:
            self.monitor_callbacks.append(callback)
            if len(self.monitor_callbacks) == 1:
                self.state.monitor(True)
        self._wake_loop()

    def unsubscribe_monitor(self, callback):
        with LOCK:
            if callback in self.monitor_callbacks:
                self.monitor_callbacks.remove(callback)
            if not self.monitor_callbacks and self.state.status != "closed":
                self.state.monitor(False)
        self._wake_loop()

    def subscribe_topic(self, topic, handler):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with LOCK:
            self.topic_handlers[topic] = handler
            self.topic_loops[topic] = loop
            self.state.subscribe(topic, True)
        self._wake_loop()

    def unsubscribe_topic(self, topic):
        with LOCK:
            self.topic_handlers.pop(topic, None)
            self.topic_loops.pop(topic, None)
            if self.state.status != "closed":
                self.state.subscribe(topic, False)
        self._wake_loop()

    # ---------------------------------------------------------------- I/O thread

    def _flush(self):
        with LOCK:
            msgs = self.state.take_messages()
            scheduler = self.state.scheduler
        if msgs:
            try:
                send(self.socket, self.session.dumps(msgs, scheduler))
            except zmq.ZMQError as e:
                logger.warning("client: could not send to the scheduler: %s", e)

    def _on_socket_event(self, frames):
        event = parse_monitor_message([f.bytes for f in frames])["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connected.set()
            try:
                send(self.socket, self.handshake.hello(self.session))
            except zmq.ZMQError as e:
                logger.debug("client: could not greet the scheduler: %s", e)
        elif event == zmq.EVENT_DISCONNECTED and self.state.status != "closed":
            self.connected.clear()
            reason = f"lost the connection to the scheduler at {self.address}"
            logger.warning("client: %s", reason)
            self._call(self.state.disconnected, reason)

    def _on_frames(self, frames):
        try:
            msgs = self.session.loads(frames)
        except ProtocolError as e:
            self.rejections("the scheduler", e)
            return
        frames.clear()         # received buffers live on only in the values
        for msg in msgs:
            handler = self.from_scheduler.get(msg.get("op"))
            if handler is None:
                logger.debug("client: ignored a message %r", msg.get("op"))
                continue
            handler(msg)

    def _to_state(self, msg, handle=None):
        # The hot path, a "key-in-memory" per task: `_call` with one Done inlined.
        with LOCK:
            out = (handle or self.state.handle)(msg)
            if not out:
                return
            if len(out) == 1 and type(out[0]) is Done:
                st = out[0].state
                event, callbacks = take_waiters(st)
                after = None
            else:
                after = self._take(out)
        if after is None:
            if event is not None or callbacks:
                wake(st, event, callbacks)
        else:
            self._carry_out(after)

    def _on_hello_reply(self, msg):
        answer = self.handshake.answer(msg)
        if answer is None:
            return                   # not the answer to our latest hello
        epoch, scheduler = answer
        with LOCK:
            known = self.state.epoch
        if known is not None and known != epoch:
            logger.warning("client: a new scheduler answers at %s", self.address)
        self.session.epoch = epoch
        self._call(self.state.answered, epoch, scheduler)

    def _on_monitor_snapshot(self, msg):
        self.last_snapshot = msg
        for cb in list(self.monitor_callbacks):
            try:
                cb(msg)
            except Exception:
                logger.exception("client: monitor callback failed")

    def _on_ping(self, msg):
        """Pings only test that this client is reachable."""

    def _on_event(self, msg):
        handler = self.topic_handlers.get(msg["topic"])
        if handler is None:
            return
        try:
            done = handler(tuple(msg["event"]))
        except Exception:
            logger.exception("client: handler of %r events failed", msg["topic"])
            return
        if inspect.isawaitable(done):
            self._await_handler(msg["topic"], done)

    def _await_handler(self, topic, awaitable):
        """An `async def` handler's coroutine runs, as with dask.distributed: in the
        event loop it was subscribed from while that runs, else to its end on the
        callback thread."""
        async def run():
            try:
                await awaitable
            except Exception:
                logger.exception("client: handler of %r events failed", topic)
        loop = self.topic_loops.get(topic)
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(run(), loop)
        else:
            self.callbacks.submit(asyncio.run, run())

    FROM_SCHEDULER = {
        "hello-reply": _on_hello_reply,
        "monitor-snapshot": _on_monitor_snapshot,
        "ping": _on_ping,
        "event": _on_event,
    }

    # ---------------------------------------------------------------- small results

    def _connect_worker(self, address):
        if address in self.result_sockets or not self.loop.running:
            return
        sock = self._open_worker_socket(
            self.result_sockets, address, zmq.EVENT_DISCONNECTED, self._on_worker_frames,
            lambda frames: self._worker_lost(address))
        try:
            # Queued by ZeroMQ until the connection is made.
            send(sock, self.session.dumps([{"op": "subscribe-results"}],
                                          address.encode()))
        except zmq.ZMQError as e:
            logger.debug("client: could not subscribe to %s: %s", address, e)

    def _on_worker_frames(self, frames):
        try:
            msgs = self.session.loads(frames)
        except ProtocolError as e:
            self.rejections("a worker", e)
            return
        for msg in msgs:
            if msg.get("op") == "task-result":
                self.direct_results += 1
                self._to_state(msg, self.state.handle_worker)

    def _worker_lost(self, address):
        """The worker's connection dropped (it died, most likely): results come the
        long way until one names it again."""
        self._close_worker_socket(self.result_sockets, address)
        with LOCK:
            self.state.worker_lost(address)

    # ---------------------------------------------------------------- actors

    def actor_call(self, address, msg):
        """Send "actor-call" straight to the worker at ``address`` (any thread); a
        `concurrent.futures.Future` of its "actor-result"."""
        future = cf.Future()
        self.loop.call_soon(self._send_actor_call, address, msg, future)
        return future

    def _send_actor_call(self, address, msg, future):
        if self.state.status == "closed" or not self.loop.running:
            future.set_exception(ClosedClientError("the client is closed"))
            return
        if address in self.actor_lost:
            future.set_result(_lost_reply(address))
            return
        if address not in self.actor_sockets:
            self._connect_actor_worker(address)
        rid = next(self.actor_ids)
        msg["request_id"] = rid
        self.actor_pending[rid] = (address, future)
        # Sent at the end of this turn of the loop: calls made meanwhile go together.
        self.actor_outbox.setdefault(address, []).append(msg)

    def _flush_actor_calls(self):
        if not self.actor_outbox:
            return
        outbox, self.actor_outbox = self.actor_outbox, {}
        for address, msgs in outbox.items():
            sock = self.actor_sockets.get(address, (None,))[0]
            for i in range(0, len(msgs), ACTOR_BATCH):
                batch = msgs[i:i + ACTOR_BATCH]
                try:
                    if sock is None:
                        raise ConnectionError(f"no connection to {address}")
                    send(sock, self.session.dumps(batch, address.encode()))
                except Exception as e:
                    for msg in batch:
                        pending = self.actor_pending.pop(msg["request_id"], None)
                        if pending is not None and not pending[1].done():
                            pending[1].set_exception(e)

    def _connect_actor_worker(self, address):
        # A worker binds its actor socket before any handle names it, so a refused
        # connection (a retry) means the worker is gone, as does a dropped one.
        return self._open_worker_socket(
            self.actor_sockets, address, zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED,
            lambda frames: self._on_actor_frames(address, frames),
            lambda frames: self._actor_worker_lost(address))

    def _on_actor_frames(self, address, frames):
        try:
            msgs = self.session.loads(frames)
        except ProtocolError as e:
            self.rejections(address, e)
            return
        for msg in msgs:
            if msg.get("op") != "actor-result":
                continue
            pending = self.actor_pending.pop(msg.get("request_id"), None)
            if pending is not None and not pending[1].done():
                pending[1].set_result(msg)

    def _actor_worker_lost(self, address):
        """The connection to a worker holding actors dropped, or was refused: the
        worker is gone (it keeps its actor socket for its whole life), and its
        actors' state with it.  Calls waiting fail, and later ones at once."""
        self.actor_lost.add(address)
        self.actor_outbox.pop(address, None)
        self._close_worker_socket(self.actor_sockets, address)
        for rid, (where, future) in list(self.actor_pending.items()):
            if where == address:
                del self.actor_pending[rid]
                if not future.done():
                    future.set_result(_lost_reply(address))

    def _open_worker_socket(self, table, address, events, on_frames, on_event):
        """A DEALER to a worker's socket at ``address`` (the cluster's key guards it,
        CURVE when encrypted), kept in ``table`` with a monitor of ``events``; the
        I/O loop calls ``on_frames`` with what comes, ``on_event`` on those events."""
        sock = connect_dealer(self.loop.context, self.security, self.id, address,
                              events=events)
        monitor = sock.get_monitor_socket(events)
        table[address] = sock, monitor
        self.loop.add_socket(sock, on_frames)
        self.loop.add_socket(monitor, on_event)
        return sock

    def _close_worker_socket(self, table, address):
        sock, monitor = table.pop(address, (None, None))
        if sock is None:
            return
        self.loop.remove_socket(monitor)
        self.loop.remove_socket(sock)
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)

    # ---------------------------------------------------------------- life

    def begin_close(self):
        """Refuse new requests; False if closed already."""
        with LOCK:
            return self.state.begin_close()

    def finish_close_op(self, timeout=5):
        """Wait for the answers to the withdrawn waits (`ClientState.begin_close`),
        send the last word, stop the I/O thread (neither waited for from itself),
        then cancel pending keys and wake threads still waiting for an answer."""
        if self.loop.running and not self.loop.in_loop():
            deadline = time.monotonic() + timeout
            with LOCK:
                waits = self.state.parked_tokens()
            self._wake_loop()                   # the withdraws go out
            for token in waits:
                try:
                    yield KeptAnswer(token, _remaining(deadline), "a withdrawn wait")
                except Exception:           # its own caller reads what it was
                    pass

        def bye():
            self._flush()
            for address in list(self.actor_sockets):
                self._close_worker_socket(self.actor_sockets, address)
            for address in list(self.result_sockets):
                self._worker_lost(address)
            for _, future in self.actor_pending.values():
                if not future.done():
                    future.set_exception(ClosedClientError("the client closed"))
            self.actor_pending.clear()
            self.uploads.stop()
            self.loop.running = False
        if self.loop.running:
            self.loop.call_soon(bye)
        yield Call(self.loop.stop, timeout)
        self.rejections.close()
        self._call(self.state.closed)


def _lost_reply(address):
    return {"status": "lost", "text": f"the worker {address} holding this actor is "
                                      "gone, and the actor's state with it"}


def _remaining(deadline):
    return None if deadline is None else max(deadline - time.monotonic(), 0)
