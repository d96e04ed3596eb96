"""An OpenAI-compatible HTTP endpoint on the gateway: a real client drives an emulated chip.

``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streamed as
server-sent events when ``stream`` is true), authenticated with the gateway's own API keys
(``Authorization: Bearer <key>``; a missing or unknown key gets 401) and the tenant's rate
limit (429). A model id names a deployment on the pool, ``MODEL@CHIP`` (e.g.
``Qwen2.5-0.5B@ascend-910b2``): the request runs as the agent's ``Generate`` stream on a READY
node of that chip, and each token is sent when its virtual timestamp comes due, scaled by
``speed_factor`` (1.0: real time), so a client sees the chip's TTFT and TPOT as it would live.

Why in the gateway: it is the one public endpoint and already owns what this needs (the API
keys and tenants, the rate limits, the registry channel and trace propagation); a separate
service would either copy the keys or ask the gateway for every request. aiohttp serves it in
the gateway's own event loop (no second server process or thread), and streams with its
``StreamResponse``.

What is emulated: no weights are loaded, so the tokens are the agent's synthetic, seeded ids,
shown as syllables (``_token_text``); prompt length is counted at four characters a token
(no tokenizer is loaded either), or exactly when the prompt is a list of token ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from gateway.auth import ApiKeys, Tenant
from gateway.ratelimit import RateLimiter
from pocgrid.catalog import UnknownChipError, UnknownModelError, default_catalog
from pocgrid.metadata import TENANT_METADATA_KEY
from pocgrid.perf.fit import check_fit
from pocgrid.precision import to_proto
from pocgrid.v1 import agent_pb2, agent_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.core.errors import PocgridError
from services.core.logging import get_logger

log = get_logger()

#: The agent refuses longer requests (its MAX_LLM_LEN); refused here first with a clear 400.
MAX_TOKENS = 32_768
_CHARS_PER_TOKEN = 4
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
#: HTTP status for a gRPC status the agent or registry answered with.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class HttpError(Exception):
    """An OpenAI-shaped error body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> web.Response:
        kind = {401: "authentication_error", 429: "rate_limit_error", 404: "not_found_error"}
        body = {
            "error": {
                "message": self.message,
                "type": kind.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code or None,
            }
        }
        return web.json_response(body, status=self.status)


def _token_text(token_id: int) -> str:
    """A synthetic token id as a readable piece of text (no weights, so no real vocabulary)."""
    n = len(_SYLLABLES)
    return " " + _SYLLABLES[token_id % n] + _SYLLABLES[(token_id // n) % n]


def prompt_tokens(prompt: object) -> int:
    """Prompt length in tokens: exact for token ids, four characters a token for text."""
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise HttpError(400, "prompt: one prompt per request (a string)", param="prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HttpError(400, "prompt: must be a string or a list of token ids", param="prompt")
    return max(1, math.ceil(len(prompt) / _CHARS_PER_TOKEN))


def chat_tokens(messages: object) -> int:
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "messages: must be a non-empty list", param="messages")
    chars = 0
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("content", ""), str):
            raise HttpError(
                400, f"messages[{i}]: must be {{role, content}} with text content", param="messages"
            )
        # A few tokens of chat template per message, as chat formats add role markers.
        chars += len(str(m.get("content") or "")) + 4 * _CHARS_PER_TOKEN
    return max(1, math.ceil(chars / _CHARS_PER_TOKEN))


@dataclass(frozen=True, slots=True)
class Deployment:
    model: str
    chip: str
    precision: str

    @property
    def id(self) -> str:
        return f"{self.model}@{self.chip}"


class OpenAIEndpoint:
    """The HTTP app; ``start()`` binds ``listen``, ``stop()`` finishes in-flight streams."""

    def __init__(
        self,
        listen: str,
        keys: ApiKeys,
        limiter: RateLimiter,
        registry: grpc.aio.Channel,
        agent_channel: Callable[[str], grpc.aio.Channel],
        *,
        speed_factor: float = 1.0,
        shutdown_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = 1024 * 1024,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._ssl = ssl_context
        self._host, self._port = host or "127.0.0.1", int(port)
        self._keys, self._limiter = keys, limiter
        self._registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self._agent_channel = agent_channel
        self._speed = speed_factor
        self._shutdown_s = shutdown_s
        self._fits: dict[tuple[str, str], str | None] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._max_body = max_body_bytes
        # aiohttp stops reading at client_max_size and raises 413, which _body words.
        app = web.Application(middlewares=[self._errors], client_max_size=max_body_bytes)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._app = app

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=self._shutdown_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        server = site._server  # aiohttp keeps the bound socket here; port 0 needs it read back
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("gateway.openai.started", address=self.address, tls=self._ssl is not None)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- request path ---------------------------------------------------------------------
    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            return exc.response()
        except PocgridError as exc:  # authentication and rate limits, from the gateway's own
            status = 401 if exc.code == grpc.StatusCode.UNAUTHENTICATED else 429
            if exc.code not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                status = _HTTP_STATUS.get(exc.code, 500)
            return HttpError(status, exc.message, code=exc.reason or "").response()

    async def _tenant(self, request: web.Request) -> Tenant:
        try:
            tenant = await self._keys.authenticate(request.headers.get("Authorization"))
        except PocgridError as exc:
            # As on gRPC: without valid credentials the peer's own budget pays.
            raise self._limiter.refuse_unauthenticated(request.remote or "", exc) from None
        self._limiter.acquire(tenant)
        return tenant

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(
                413,
                f"request body: larger than {self._max_body} bytes (POCGRID_OPENAI_MAX_BODY_BYTES)",
                code="request_too_large",
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return body

    async def _ready_chips(self) -> dict[str, str]:
        """Chip type -> the agent address of one READY node of it."""
        # Asked as the gateway itself, not for the tenant: a tenant's view of the nodes has no
        # agent addresses (services/core/tenant_view.py), and the endpoint needs one.
        resp = await self._registry.ListNodes(
            registry_pb2.ListNodesRequest(state=registry_pb2.NODE_STATE_READY), timeout=10
        )
        chips: dict[str, str] = {}
        for node in resp.nodes:
            chips.setdefault(node.chip, node.agent_address)
        return chips

    def _precision(self, chip: str, model: str) -> str | None:
        """The deployment's precision (bf16 where the chip has it, else fp16) when the model
        fits one device of the chip, as the agent serves ``Generate``; None when it does not."""
        key = (chip, model)
        if key not in self._fits:
            cat = default_catalog()
            have = {str(p) for p in cat.precisions(cat.chip(chip))}
            found: str | None = None
            for precision in ("bf16", "fp16"):
                if precision in have:
                    fit = check_fit(cat.chip(chip), cat.model(model), precision, 1)
                    found = precision if fit.fits else None
                    break
            self._fits[key] = found
        return self._fits[key]

    async def _deployments(self, tenant: Tenant) -> list[Deployment]:
        chips = await self._ready_chips()
        llms = [m.name for m in default_catalog().models if m.kind == "llm"]
        out = []
        for chip in sorted(chips):
            for model in llms:
                precision = await asyncio.to_thread(self._precision, chip, model)
                if precision is not None:
                    out.append(Deployment(model, chip, precision))
        return out

    async def _models(self, request: web.Request) -> web.Response:
        tenant = await self._tenant(request)
        created = int(time.time())
        data = [
            {"id": d.id, "object": "model", "created": created, "owned_by": d.chip}
            for d in await self._deployments(tenant)
        ]
        return web.json_response({"object": "list", "data": data})

    async def _resolve(self, tenant: Tenant, model: object) -> tuple[Deployment, str]:
        if not isinstance(model, str) or "@" not in model:
            raise HttpError(
                400,
                "model: must name a deployment as MODEL@CHIP, e.g. Qwen2.5-0.5B@ascend-910b2 "
                "(GET /v1/models lists them)",
                param="model",
            )
        name, _, chip = model.rpartition("@")
        cat = default_catalog()
        try:
            entry = cat.model(name)
            cat.chip(chip)
        except (UnknownChipError, UnknownModelError):
            raise HttpError(
                404,
                f"model: no deployment {model!r} (GET /v1/models lists them)",
                param="model",
                code="model_not_found",
            ) from None
        if entry.kind != "llm":
            raise HttpError(400, f"model: {name} is not an LLM", param="model")
        chips = await self._ready_chips()
        if chip not in chips:
            raise HttpError(
                404,
                f"model: no READY node of chip {chip} in the pool",
                param="model",
                code="model_not_found",
            )
        precision = await asyncio.to_thread(self._precision, chip, name)
        if precision is None:
            raise HttpError(400, f"model: {name} does not fit one device of {chip}", param="model")
        return Deployment(name, chip, precision), chips[chip]

    @staticmethod
    def _max_tokens(body: Mapping[str, Any], default: int) -> int:
        raw = body.get("max_completion_tokens", body.get("max_tokens"))
        value = default if raw is None else raw
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
            raise HttpError(
                400, f"max_tokens: must be an integer in [1, {MAX_TOKENS}]", param="max_tokens"
            )
        return value

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        tenant = await self._tenant(request)
        body = await self._body(request)
        n_in = prompt_tokens(body.get("prompt", ""))
        return await self._serve(request, tenant, body, n_in, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        tenant = await self._tenant(request)
        body = await self._body(request)
        n_in = chat_tokens(body.get("messages"))
        return await self._serve(request, tenant, body, n_in, chat=True)

    async def _serve(
        self, request: web.Request, tenant: Tenant, body: dict[str, Any], n_in: int, *, chat: bool
    ) -> web.StreamResponse:
        if body.get("n", 1) != 1:
            raise HttpError(400, "n: only 1 completion per request", param="n")
        deployment, address = await self._resolve(tenant, body.get("model"))
        # OpenAI's default for completions is 16 tokens; chat has no limit there, 256 here.
        n_out = self._max_tokens(body, 256 if chat else 16)
        seed = body.get("seed")
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        gen = agent_pb2.GenerateRequest(
            request_id=rid,
            job_id="openai",
            model=deployment.model,
            precision=to_proto(deployment.precision),
            input_len=n_in,
            max_output_tokens=n_out,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
        )
        stub = agent_pb2_grpc.AgentServiceStub(self._agent_channel(address))
        call = stub.Generate(gen, metadata=((TENANT_METADATA_KEY, tenant.name),))
        frames = self._paced(call)
        created = int(time.time())
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        if not body.get("stream"):
            text = "".join([piece async for piece, _t in frames])
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length",
                }
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            return web.json_response(
                {
                    "id": rid,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": deployment.id,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._stream(
            request, frames, rid, created, deployment, chat, usage, include_usage
        )

    async def _paced(self, call: Any) -> AsyncIterator[tuple[str, float]]:
        """(text, virtual time) per token, each released when its virtual time comes due.

        Paced on the request's own service time (``virtual_time_s - queued_s``): the virtual
        work queued ahead of it on the device (an evaluation's bulk run, say) happened on a
        clock that does not follow the wall, so replaying it in real time would make a client
        wait minutes for nothing. The chunks still carry the full virtual time."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async for token in call:
                if self._speed > 0:
                    served = token.virtual_time_s - token.queued_s
                    delay = start + served / self._speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield _token_text(int(token.token_id)), float(token.virtual_time_s - token.queued_s)
        except grpc.aio.AioRpcError as exc:
            raise HttpError(
                _HTTP_STATUS.get(exc.code(), 502), f"agent: {exc.details()}", code=exc.code().name
            ) from None
        finally:
            call.cancel()  # a client that left: the agent records what it produced

    async def _stream(
        self,
        request: web.Request,
        frames: AsyncIterator[tuple[str, float]],
        rid: str,
        created: int,
        deployment: Deployment,
        chat: bool,
        usage: dict[str, int],
        include_usage: bool,
    ) -> web.StreamResponse:
        # The first token is awaited before the headers go out, so an agent's refusal is still
        # an HTTP error status rather than an event inside a 200 stream.
        first = await anext(aiter(frames), None)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, virtual_s: float | None, finish: str | None) -> bytes:
            if chat:
                delta: dict[str, Any] = {} if piece is None else {"content": piece}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {
                    "index": 0,
                    "text": piece or "",
                    "logprobs": None,
                    "finish_reason": finish,
                }
            data: dict[str, Any] = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": deployment.id,
                "choices": [choice],
            }
            if virtual_s is not None:
                # Not OpenAI's: when the token left the emulated chip, virtual seconds after the
                # device started the request.
                data["pocgrid_virtual_time_s"] = virtual_s
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        with contextlib.suppress(ConnectionResetError):
            if chat:
                await resp.write(
                    b"data: "
                    + json.dumps(
                        {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": deployment.id,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None,
                                }
                            ],
                        }
                    ).encode()
                    + b"\n\n"
                )
            if first is not None:
                await resp.write(chunk(first[0], first[1], None))
                try:
                    async for piece, virtual_s in frames:
                        await resp.write(chunk(piece, virtual_s, None))
                except HttpError as exc:
                    # The status line is gone already: the error is the stream's last event.
                    error = {"message": exc.message, "type": "server_error", "code": exc.code}
                    await resp.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
                    await resp.write_eof()
                    return resp
            await resp.write(chunk(None, None, "length"))
            if include_usage:
                await resp.write(
                    b"data: "
                    + json.dumps(
                        {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": deployment.id,
                            "choices": [],
                            "usage": usage,
                        }
                    ).encode()
                    + b"\n\n"
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        return resp
