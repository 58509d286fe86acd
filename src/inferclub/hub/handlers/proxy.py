"""The proxy handler: routes a request to one of the caller's providers, with failover, and
relays the answer. The endpoint handlers in :mod:`.openai` subclass it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tornado.iostream import StreamClosedError

from inferclub import openai_errors, wire
from inferclub.hub.affinity import Conversation
from inferclub.hub.handlers.base import ApiHandler, shutting_down
from inferclub.hub.limits import RequestRate
from inferclub.hub.relay import RequestMeter, Transform, Upstream
from inferclub.hub.relay.connect import UpstreamResponse
from inferclub.hub.relay.keepalive import KeepAlive
from inferclub.hub.relay.meter import SERVER_CUT_CODE
from inferclub.hub.relay.stream import stream_error
from inferclub.hub.relay.whole import is_whole, read_body
from inferclub.hub.routing import Route
from inferclub.openai_errors import OpenAIError, normalise_error_body


def checked_model(model: object) -> str:
    """The request's ``model``, or a 400 naming it: a huge id would be stored in every
    history row and compared on every route."""
    if not isinstance(model, str) or not model:
        raise openai_errors.bad_request(
            "You must provide a model parameter.", "model", "missing_model"
        )
    if len(model) > wire.MAX_MODEL_ID:
        raise openai_errors.bad_request(
            f"The model id is longer than {wire.MAX_MODEL_ID} characters.",
            "model",
            "model_too_long",
        )
    return model


@dataclass
class Forward:
    """What goes to the agent, and how its answer comes back."""

    body: bytes
    #: The hub asked for stream usage the client did not ask for: strip it again.
    strip_usage: bool = False
    #: Rewrites a whole (non-streamed) success body: ``(content type, body) -> same``.
    transform: Transform | None = None
    #: Extra response headers for the client.
    headers: dict[str, str] = field(default_factory=dict)
    #: The client asked for an event stream (keep-alive comments while it waits).
    stream: bool = False
    #: A chat's conversation (hub/affinity.py): its next turn prefers the service that served.
    conversation: Conversation | None = None


#: Statuses from an agent that send a request on to the next candidate: the agent is busy
#: (429, its service at max_concurrency) or could not reach its engine (502, 503).
RETRIED_STATUSES = frozenset({429, 502, 503})


class ProxyHandler(ApiHandler):
    """Routes a request to one of the caller's online providers and relays the answer."""

    #: The endpoint (relative to ``/v1``) this handler serves: a key of ``wire.ENDPOINT_TYPES``.
    endpoint: ClassVar[str] = "/chat/completions"

    #: This request's task while its attempts and relay run: what ``cut`` and a client that
    #: leaves cancel.
    _relay_task: asyncio.Task[Any] | None = None
    #: The shutdown deadline cut this request (``cut``).
    _cut = False
    #: ``_relay_task`` was cancelled here (not by whoever runs the handler).
    _cancelled = False
    #: The client's connection closed (``on_connection_close``): its body's chunks are gone.
    _gone = False
    #: The ticket of this request's start while it holds it (hub/fairness.py).
    _ticket: float | None = None

    @property
    def service_type(self) -> str:
        return wire.ENDPOINT_TYPES[self.endpoint]

    @property
    def api_path(self) -> str:
        """The ``/v1/...`` path this request stands for (the dashboard serves them elsewhere)."""
        return self.request.path

    def parse(self) -> tuple[str, Forward]:
        """The model to route on and what to forward; JSON bodies by default."""
        payload = self.json_body()
        model = checked_model(payload.get("model"))
        return model, Forward(self.body)

    def adapt(self, route: Route, fwd: Forward) -> Forward:
        """A last change of the request once the service is known (see transcriptions)."""
        return fwd

    async def post(self) -> None:
        hub = self.hub
        meter = RequestMeter(
            user_id=self.owner.user_id,
            key_id=self.owner.key_id,
            endpoint=self.api_path,
            type=self.service_type,
            bytes_in=self._size,
            # The id set_default_headers made and sent: one random id per request.
            id=self.request_id,
        )
        hub.inflight += 1
        hub.active.add(self)
        try:
            # take/give_back, not the slot() context manager: a generator per request.
            user_id = self.owner.user_id
            # A user alone on the hub (the home case) is never paced (hub/limits.py).
            shared = hub.turns.shared()
            try:
                hub.concurrency.take(user_id)
            except OpenAIError:
                if not shared:
                    raise
                # Not at once: a client that ignores Retry-After would spin the hub's CPU on
                # refusals. After a second, and one at a time at the user's rate (refusals
                # of many connections must not come due together), it tries again.
                if not await self._waited(hub.refusal_rate, meter):
                    return
                hub.concurrency.take(user_id)
            try:
                if not shared or await self._waited(hub.request_rate, meter):
                    await self._serve(meter)
            finally:
                hub.concurrency.give_back(user_id)
        except OpenAIError as err:
            meter.failed(err.status, err.type, err.code)
            raise
        finally:
            hub.active.discard(self)
            hub.inflight -= 1
            row = meter.finished()
            hub.history.add(row)
            hub.metrics.request_done(row, self.provider_name)

    async def _waited(self, schedule: RequestRate, meter: RequestMeter) -> bool:
        """Wait for this request's slot on its user's ``schedule`` (hub/limits.py): whether
        it may go on then. Not if its client left (the slot is given back) or the shutdown
        deadline cut it; a 503 if the hub began to drain meanwhile, a 401 if its key was
        revoked."""
        user_id = self.owner.user_id
        wait = schedule.wait(user_id)
        if not wait:
            return True
        if not await self._pause(wait, meter):
            schedule.give_back(user_id)
            return False
        if self.hub.draining:
            raise shutting_down()
        await self.authenticate()
        return True

    async def _pause(self, seconds: float, meter: RequestMeter) -> bool:
        """Sleep ``seconds`` unless the client leaves or the shutdown deadline cuts this
        request first: then end it here (as a relay they cancel is) and return False."""
        task = asyncio.current_task()
        self._relay_task = task
        try:
            if not self._client_gone():
                await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if not self._cancelled or task is None:
                raise
            task.uncancel()
            self._ended_early(meter)
            return False
        finally:
            self._relay_task = None
        if self._client_gone():
            self._connection_lost(meter)
            return False
        return True

    def _client_gone(self) -> bool:
        """The client's connection is closed: on_connection_close said so, or it closed
        before this handler could hear of it (a client that sends its request and closes at
        once; Tornado reports a close only to a handler that exists when it happens)."""
        stream = getattr(self.request.connection, "stream", None)
        return self._gone or (stream is not None and stream.closed())

    async def _serve(self, meter: RequestMeter) -> None:
        # One user's burst of starts must not delay another user's (hub/fairness.py).
        self._ticket = await self.hub.turns.hold(self.owner.user_id, self._size)
        try:
            await self._started(meter)
        finally:
            self._release_start()

    def _release_start(self) -> None:
        if self._ticket is not None:
            self.hub.turns.release(self.owner.user_id, self._ticket)
            self._ticket = None

    async def _started(self, meter: RequestMeter) -> None:
        if self._client_gone():
            # The client left after sending its body (on_connection_close dropped the chunks):
            # cancelled, not a 400 for an empty body, and no agent is asked.
            self._connection_lost(meter)
            return
        model, fwd = self.parse()
        meter.asked_for(model)
        # The attempts run in this handler's own task (a task of their own per request cost
        # as much as the rest of the handler's bookkeeping); ``cut`` and a client that leaves
        # cancel it only while they run (``_relay_task``).
        task = asyncio.current_task()
        self._relay_task = task
        try:
            await self._attempts(model, fwd, meter)
        except asyncio.CancelledError:
            if not self._cancelled or task is None:
                raise
            task.uncancel()
            self._ended_early(meter)
            return
        except StreamClosedError:
            # A write found the connection closed before on_connection_close ran.
            self._connection_lost(meter)
            return
        finally:
            self._relay_task = None  # no cancel from here on
        if not self._finished:
            self.finish()

    async def _attempts(self, model: str, fwd: Forward, meter: RequestMeter) -> None:
        """Try the chosen routes in order until one answers: failover before the first byte.

        A connect error, a reset or timeout before the response headers, or a 429/502/503
        from the agent moves on to the next route, up to ``max_attempts`` in all and within
        ``first_byte_timeout``. The last route's answer, whatever it is, goes to the client.
        A stream that waits past ``stream_keepalive`` gets its 200 and keep-alive comments
        (see :mod:`~inferclub.hub.relay.keepalive`): no failover after that, and an error
        becomes the stream's final error event.
        """
        hub = self.hub
        routes, fwd = await self._choose(model, fwd, meter)
        keepalive = KeepAlive(self, meter, hub.settings.stream_keepalive if fwd.stream else 0)
        keepalive.start()
        try:
            error = await self._try(
                routes[: max(1, hub.settings.max_attempts)], fwd, meter, keepalive
            )
        finally:
            keepalive.stop()
        if error is None:
            return
        if keepalive.committed:
            await stream_error(self, meter, error)
            return
        raise error

    async def _try(
        self, routes: list[Route], fwd: Forward, meter: RequestMeter, keepalive: KeepAlive
    ) -> OpenAIError | None:
        """The attempts: None once one answered, else the error for the client."""
        hub = self.hub
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hub.settings.first_byte_timeout
        error: OpenAIError | None = None
        for n, route in enumerate(routes, 1):
            left = deadline - loop.time()
            if left <= 0 or (n > 1 and keepalive.committed):
                break
            # fleet.enter/leave, not the busy() context manager: a generator per attempt.
            busy = hub.fleet.enter(route)
            try:
                resp, adapted = await self._send(n, route, fwd, meter, left)
            except OpenAIError as err:
                hub.fleet.leave(busy, route.provider.user_id)
                if err.code == "hub_overloaded":
                    raise  # the hub's own trouble: no provider is to blame
                hub.fleet.failed(route.provider.id)
                error = err
                continue
            except BaseException:
                hub.fleet.leave(busy, route.provider.user_id)
                raise
            try:
                if resp.status in RETRIED_STATUSES and n < len(routes) and not keepalive.committed:
                    self._note_refusal(route, resp.status)
                    resp.close()
                    continue
                self._note_answer(route, resp.status)
                if resp.status < 400 and fwd.conversation is not None:
                    hub.fleet.affinity.served(
                        fwd.conversation.asked, route.provider.id, route.service.name
                    )
                keepalive.stop()
                await self._answer(resp, adapted, meter, keepalive.committed)
                return None
            finally:
                hub.fleet.leave(busy, route.provider.user_id)
        return error or OpenAIError(
            504,
            f"No provider answered within {hub.settings.first_byte_timeout:g} s.",
            "server_error",
            "upstream_timeout",
        )

    async def _send(
        self, n: int, route: Route, fwd: Forward, meter: RequestMeter, left: float
    ) -> tuple[UpstreamResponse, Forward]:
        """Attempt ``n``: the request to ``route``, up to its response headers."""
        self._attempting(n, route, meter)
        adapted = self.adapt(route, fwd)
        upstream = self._upstream(route, meter, adapted.body, n)
        return await self.hub.relay.open(upstream, adapted.body, left), adapted

    def _upstream(self, route: Route, meter: RequestMeter, body: bytes, attempt: int) -> Upstream:
        # Each attempt is signed for its own provider. A later attempt gets its own request
        # id: two services of one agent may be tried in turn, and the agent refuses a
        # request id it has seen as a replay.
        request_id = meter.id if attempt == 1 else f"{meter.id}.{attempt}"
        return Upstream.for_route(
            route,
            self.api_path,
            self.request.headers.get("Content-Type", "application/json"),
            request_id,
            self.hub.signer,
            body,
        )

    async def _answer(
        self, resp: UpstreamResponse, fwd: Forward, meter: RequestMeter, committed: bool
    ) -> None:
        relay = self.hub.relay
        if not is_whole(resp):
            # A stream's start is over at its first bytes: a long stream does not hold its
            # user's next start back. A whole answer's start ends with it (_serve).
            self._release_start()
        if committed and is_whole(resp):
            # The 200 and keep-alive comments went out: an error answer becomes the
            # stream's final error event.
            try:
                parts, complete = await read_body(resp, relay.timeouts.idle)
            finally:
                resp.close()
            meter.first_byte()
            body = b"".join(parts)
            if not complete:
                too_large = OpenAIError(
                    502, "The provider's response is too large.", "server_error"
                )
                await stream_error(self, meter, too_large)
            elif resp.status >= 400:
                shaped = normalise_error_body(resp.status, body, resp.content_type)["error"]
                err = OpenAIError(resp.status, shaped["message"], shaped["type"], shaped["code"])
                await stream_error(self, meter, err)
            else:
                self.write(b"data: " + body + b"\n\n")
            return
        for name, value in fwd.headers.items():
            self.set_header(name, value)
        await relay.answer(self, resp, meter, fwd.strip_usage, fwd.transform)

    async def _choose(
        self, model: str, fwd: Forward, meter: RequestMeter
    ) -> tuple[list[Route], Forward]:
        """The routes to try, and what to send them: for ``model``, or, when it cannot be
        served now, for the user's fallback model (``X-InferClub-Served-Model`` says which).
        No await after the choice: the caller counts its first attempt in flight at once."""
        hub, user = self.hub, self.owner.user_id
        try:
            routes = await hub.fleet.choose_or_wait(
                hub.registry, user, self.service_type, model, fwd.conversation
            )
        except OpenAIError as err:
            fallback = hub.fallbacks.of(user, model)
            if fallback is None or err.code not in ("model_unavailable", "model_not_found"):
                raise
            try:
                routes = await hub.fleet.choose_or_wait(
                    hub.registry, user, self.service_type, fallback, fwd.conversation
                )
            except OpenAIError:
                raise err from None  # the model asked for is what the client needs to hear of
            model, fwd = fallback, self.with_model(fwd, fallback)
        if fwd.conversation is not None:
            fwd.conversation.chosen()  # its decoded messages are not kept while the answer runs
        meter.served_as(model)
        self.set_header(wire.SERVED_MODEL_HEADER, model)
        return routes, fwd

    def with_model(self, fwd: Forward, model: str) -> Forward:
        """``fwd`` asking for ``model`` instead (a fallback): JSON bodies by default."""
        payload = json.loads(fwd.body)
        payload["model"] = model
        return dataclasses.replace(fwd, body=json.dumps(payload).encode())

    def _attempting(self, n: int, route: Route, meter: RequestMeter) -> None:
        self.hub.fleet.trying(route)
        meter.routed(route.provider.id, route.service.name)
        meter.attempted(n)
        self.provider_name, self.attempts = route.provider.name, n
        self.set_header(wire.PROVIDER_HEADER, route.provider.name)
        self.set_header(wire.ATTEMPTS_HEADER, str(n))

    def _note_refusal(self, route: Route, status: int) -> None:
        """A 429 (busy) lets another request try; a 502/503 cools the provider down."""
        if status == 429:
            self.hub.fleet.released(route.provider.id)
        else:
            self.hub.fleet.failed(route.provider.id)

    def _note_answer(self, route: Route, status: int) -> None:
        if status in (502, 503):
            self.hub.fleet.failed(route.provider.id)
        elif status == 429:
            self.hub.fleet.released(route.provider.id)
        else:
            self.hub.fleet.succeeded(route.provider.id)

    def cut(self) -> None:
        """The shutdown deadline passed: stop relaying (see ``_end_cut``)."""
        self._cut = True
        self._cancel_relay()

    def _ended_early(self, meter: RequestMeter) -> None:
        """End a request whose task ``cut`` or on_connection_close cancelled."""
        if self._cut:
            self._end_cut(meter)
        else:
            # on_connection_close cancelled it: the connection is gone.
            self._connection_lost(meter)

    def _end_cut(self, meter: RequestMeter) -> None:
        """End a request the shutdown deadline cut: a begun event stream with a final error
        event (the client sees why, not a truncated body), anything else as it can."""
        meter.cut_by_server()
        err = OpenAIError(
            503,
            "The hub is shutting down and closed this stream at its drain deadline.",
            "service_unavailable",
            SERVER_CUT_CODE,
        )
        if not self._headers_written:
            raise err
        if self._headers.get("Content-Type", "").startswith("text/event-stream"):
            self.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        self.finish()

    def _connection_lost(self, meter: RequestMeter) -> None:
        # Past the shutdown deadline the hub closes connections itself; otherwise the
        # client left.
        if self.hub.cutting:
            meter.cut_by_server()
        else:
            meter.cancelled_by_client()

    def start_stream(self) -> None:
        # Tornado leaves Nagle's algorithm on until finish(); a stream of small chunks would
        # then wait for the client's delayed ACKs (up to 40 ms each on a real network).
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)

    def on_connection_close(self) -> None:
        # Frees an abandoned upload's chunks (see ApiHandler); without it they stayed in
        # memory until the hub exited.
        super().on_connection_close()
        self._gone = True
        self._cancel_relay()

    def _cancel_relay(self) -> None:
        task = self._relay_task
        if task is not None and not task.done() and not self._cancelled:
            self._cancelled = True
            task.cancel()
