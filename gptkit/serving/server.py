"""A web demo and an OpenAI-compatible completions and chat API for a gptkit model.

    python main.py serve --run runs/NAME        # or --hf-dir path/to/gpt2

serves, on 127.0.0.1:8000 by default:

    GET  /                      the demo page (gptkit/serving/web/index.html, no CDN, works offline)
    POST /v1/completions        OpenAI's completion API, streaming (server-sent events) or not
    POST /v1/chat/completions   OpenAI's chat API, streaming or not: the messages written in a prompt style
    GET  /v1/models             the one model served, and the prompt style chat requests get
    POST /api/generate          the page's stream: settings, text deltas, the log-probabilities if asked, a summary
    GET  /api/info              model name, request limits and prompt style, for the page
    GET  /health                generations running and waiting, and their limits (cheap: no model work)

It runs on Starlette (routing, requests and replies: the small core FastAPI itself
sits on; pydantic already validates the schemas, so FastAPI's layer would add
little) served by uvicorn (`gptkit.serving.asgi_server`). This file is the routes:
what each path answers, in terms of the engine and the OpenAI shapes. The HTTP
mechanics under them (body limits, JSON replies and errors) are
`gptkit.serving.transport`; how a route that generates runs on a worker thread
while its reply streams from the event loop (slow readers, clients that leave)
`gptkit.serving.exchange`; the request schemas and their errors
`gptkit.serving.openai_schema` and `chat_schema`; the reply shapes
`gptkit.serving.openai_replies`; the slots, the model lock and the token-by-token
generation `gptkit.serving.engine`. Choices where OpenAI's API leaves room:

* Unknown request keys are ignored, as OpenAI's own server does with fields it
  no longer uses; the known ones are validated strictly (a string is not a number).
  OpenAI's fields this server does not implement (`best_of` above 1, `suffix`,
  `logit_bias`, non-zero presence or frequency penalties, `logprobs` with `stream`;
  in chat also `n` above 1 and `logprobs`) are answered 400 naming each; `user` is
  metadata, accepted and ignored. A `model` other than the one served is answered
  404 `model_not_found`, as OpenAI does; leaving `model` out is allowed (the page does).
* /v1/completions takes a prompt as text or token ids, or a list of either, with
  `n` choices of each, `echo`, `logprobs` (0 to 20 alternatives per token: OpenAI
  allows 5, vLLM 20) and `max_tokens` 0 (score a prompt, generate nothing): what
  lm-evaluation-harness's `local-completions` model sends. The log-probabilities are
  the model's own, before the samplers, from passes over prompt and completion once
  the completion is made (`gptkit.serving.prompt_scoring`), so they are not streamed.
  The page's /api/generate streams one choice; asked for `logprobs` it sends them
  after the text, in the API's shape (with `echo`, the prompt's tokens too) for the
  page to colour each token by its probability.
* A chat request's messages are written in the run's prompt style when it was
  finetuned on instructions (config.json's `data.format = "instruction"`), else in
  the built-in `chat` style, so the endpoint answers for any model; /v1/models
  and /api/info say which (`prompt_style`, `prompt_style_source`). Its reply
  ends at the style's stop strings as well as the request's.
* The sampler fields a request leaves out take the run's own chain (its
  config.json's `sampling.samplers`, repetition penalty included), so the page
  and an API client with no settings see what the run's samples showed;
  `max_tokens` null is the server's cap.
* The page is rendered once, at start-up, with the run's example prompt and its
  chain's values in its fields.
* Up to `max_concurrent` generations are decoded together (`gptkit.serving.batch_loop`):
  one thread owns the model and runs one forward pass per step for every running
  generation, each in its own row of a ragged KV cache (`gptkit.generation.continuous_batching`);
  a new one joins after its prompt's prefill, a finished or abandoned one leaves at the
  next step. Scoring takes the same lock the loop holds around each step.
* Generations past `max_concurrent` wait up to `queue_timeout` seconds in a queue
  of `max_queue`; beyond that they are answered 429.
* A client that goes away stops its generation at the next token and frees its slot.
  One that reads slowly holds up no generation, its own included: its events wait
  in memory (one per token at most) while the event loop sends them.
* There is no authentication: it listens on loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gptkit.errors import GptkitError
from gptkit.model.gpt import GPTModel
from gptkit.serving.asgi_server import ApiServer
from gptkit.serving.chat_schema import ChatCompletionRequest
from gptkit.serving.engine import Job, ModelService, ServedStyle
from gptkit.serving.exchange import Exchange, RelayedReply, worker_threads
from gptkit.serving.openai_replies import ChatReplies, Replies, TextReplies, model_card
from gptkit.serving.openai_schema import (
    ApiError,
    CompletionRequest,
    GenerationFields,
    parse_request,
)
from gptkit.serving.page import PAGE_POLICY, page_template, render_page
from gptkit.serving.request_sampling import DefaultChain
from gptkit.serving.transport import (
    ClientGone,
    RefusedBody,
    error_reply,
    is_loopback,
    json_reply,
    read_body,
)

if TYPE_CHECKING:
    from gptkit.data.tokenizer import (
        Tokenizer,  # or any registered tokenizer: encode, decode_bytes, eot_id
    )

# A generating route, on its worker thread: answers `jobs` on the exchange, calling `release_slot`
# as soon as the last token is made (the slot is free before the reply's last bytes go out).
GenerationRoute = Callable[[Exchange, list[Job], Callable[[], None]], None]


class CompletionServer(ApiServer):
    """The server `make_server` builds: the routes below over one `ModelService` and the demo page."""

    def __init__(
        self, address: tuple[str, int], service: ModelService, page: bytes, *, log_requests: bool,
        example_prompt: str = "", default_max_tokens: int = 100,
    ) -> None:
        self.service = service
        self.example_prompt = example_prompt
        self.default_max_tokens = min(default_max_tokens, service.max_new_tokens_cap)
        # A model finetuned on instructions is talked to: its page opens in chat mode.
        mode = "chat" if service.chat_style.own else "complete"
        self.page = render_page(page, service.default_chain, example_prompt, self.default_max_tokens, mode)
        self.threads = anyio.CapacityLimiter(worker_threads(service.slots.limit, service.slots.max_waiting))
        super().__init__(address, self._app(), log_requests=log_requests)

    def _app(self) -> Starlette:
        """Each method's routes in a table; a path or method with none is answered in JSON."""
        gets: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/": self._page, "/index.html": self._page, "/v1/models": self._models, "/v1/models/{name:path}": self._model,
            "/health": self._health, "/api/info": self._info,
        }
        # Each path's request schema, and the route that answers it.
        posts: dict[str, tuple[type[GenerationFields], GenerationRoute]] = {
            "/v1/completions": (CompletionRequest, lambda ex, jobs, release: self._openai(ex, jobs, release, TextReplies(self.service, jobs))),
            "/v1/chat/completions": (ChatCompletionRequest, lambda ex, jobs, release: self._openai(ex, jobs, release, ChatReplies(self.service, jobs))),
            "/api/generate": (CompletionRequest, self._generate),
        }
        routes = [Route(path, endpoint, methods=["GET"]) for path, endpoint in gets.items()]
        routes += [Route(path, self._generating(schema, route), methods=["POST"]) for path, (schema, route) in posts.items()]
        return Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})

    # -- no such route --

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return error_reply(ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found"))

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        allowed = exc.headers if isinstance(exc, HTTPException) and exc.headers else {}
        return json_reply(405, ApiError(405, f"{request.method} is not supported here", code="method_not_allowed").body(), dict(allowed))

    # -- GET: on the event loop, none of them touches the model --

    async def _page(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": PAGE_POLICY})

    async def _models(self, request: Request) -> Response:
        return json_reply(200, {"object": "list", "data": [model_card(self.service)]})

    async def _model(self, request: Request) -> Response:
        if request.path_params["name"] != self.service.model_name:
            return await self._not_found(request, HTTPException(404))
        return json_reply(200, model_card(self.service))

    async def _health(self, request: Request) -> Response:
        slots = self.service.slots  # unlocked reads: a monitor needs a recent figure, not an exact one
        return json_reply(200, {"status": "ok", "active": slots.active, "waiting": slots.waiting, "limit": slots.limit, "max_queue": slots.max_waiting})

    async def _info(self, request: Request) -> Response:
        service = self.service
        chain = service.default_chain
        return json_reply(200, {
            "model": service.model_name, "context_length": service.context_length,
            "max_tokens_cap": service.max_new_tokens_cap, "max_prompt_tokens": service.max_prompt_tokens,
            "example_prompt": self.example_prompt, "default_max_tokens": self.default_max_tokens,
            "default_samplers": list(chain.specs), "default_fields": chain.fields, **service.chat_style.describe(),
        })

    # -- POST: the body read on the event loop, the rest on a worker thread, in a slot --

    def _generating(self, schema: type[GenerationFields], route: GenerationRoute) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                body = await read_body(request)
            except RefusedBody as refused:
                return error_reply(refused.error, close=refused.close)
            return RelayedReply(lambda exchange: self._generate_on(exchange, body, schema, route), self.threads)

        return endpoint

    def _generate_on(self, exchange: Exchange, body: bytes, schema: type[GenerationFields], route: GenerationRoute) -> None:
        """`body` as a `schema` request, answered by `route` in a generation slot; errors answered as OpenAI does."""
        try:
            jobs = self.service.prepare(parse_request(body, schema))
            with contextlib.ExitStack() as slot:
                slot.enter_context(self.service.slots.hold())
                route(exchange, jobs, slot.close)
        except ApiError as err:
            exchange.send_api_error(err)
        except ClientGone:
            pass
        except Exception:  # noqa: BLE001  # a bug, not the client's doing: logged in full, answered without details
            traceback.print_exc()
            exchange.send_failure(ApiError(500, "the server failed to generate; see its log", kind="server_error"))

    def _deltas(self, exchange: Exchange, job: Job) -> contextlib.closing[Generator[str, None, None]]:
        # Closed on the way out of a route, inside its slot: a client gone mid-stream ends the
        # generation (and its hold on the model) before the slot is given back.
        return contextlib.closing(exchange.while_connected(self.service.run(job)))

    def _openai(self, exchange: Exchange, jobs: list[Job], release_slot: Callable[[], None], replies: Replies) -> None:
        """An OpenAI endpoint's answer, whole or as server-sent events ending with [DONE]; `replies` has its shapes."""
        service = self.service
        if not jobs[0].request.stream:
            texts = []
            for job in jobs:
                with self._deltas(exchange, job) as deltas:
                    texts.append("".join(deltas))
            logprobs = [service.logprobs(job) for job in jobs]
            release_slot()
            exchange.send_json(200, replies.whole(texts, logprobs))
            return
        exchange.start_events()
        for chunk in replies.opening():
            exchange.send_event(chunk)
        for i, job in enumerate(jobs):
            if i:  # the choice before is done; the last one's finish waits until the slot is free
                exchange.send_event(replies.finish(jobs[i - 1]))
            for chunk in replies.start(job):
                exchange.send_event(chunk)
            with self._deltas(exchange, job) as deltas:
                for delta in deltas:
                    if delta:
                        exchange.send_event(replies.delta(job, delta))
        release_slot()
        exchange.send_event(replies.finish(jobs[-1]))
        options = jobs[0].request.stream_options
        if options is not None and options.include_usage:
            exchange.send_event(replies.usage())
        exchange.send_event(b"[DONE]")
        exchange.end_events()

    def _generate(self, exchange: Exchange, jobs: list[Job], release_slot: Callable[[], None]) -> None:
        """The page's stream: one settings event, text events, a logprobs event if asked for, one done event."""
        if len(jobs) != 1:
            param = "n" if jobs[0].request.n != 1 else "prompt"
            raise ApiError(400, f"/api/generate streams one completion, and this request asks for {len(jobs)}: send one prompt and n 1 (POST /v1/completions makes several)", param=param)
        [job] = jobs
        service = self.service
        exchange.start_events()
        exchange.send_event({"type": "settings", "model": service.model_name, "settings": job.settings()})
        started = time.perf_counter()
        with self._deltas(exchange, job) as deltas:
            for delta in deltas:
                if delta:
                    exchange.send_event({"type": "text", "text": delta})
        elapsed = time.perf_counter() - started
        logprobs = service.logprobs(job)
        release_slot()
        if logprobs is not None:
            # With the text the offsets put before the completion: the prompt as its tokens spell it, when echoed.
            exchange.send_event({"type": "logprobs", "prompt": job.echo, "logprobs": logprobs})
        exchange.send_event({"type": "done", "finish_reason": job.finish_reason, "usage": job.usage(), "seconds": round(elapsed, 3)})
        exchange.end_events()


# --- entry points -------------------------------------------------------------


def make_server(
    model: GPTModel,
    tokenizer: Tokenizer,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str = "gptkit",
    max_concurrent: int = 8,
    max_queue: int = 8,
    max_new_tokens_cap: int = 512,
    max_prompt_tokens: int | None = None,
    queue_timeout: float = 10.0,
    log_requests: bool = False,
    samplers: Sequence[Any] | None = None,
    example_prompt: str = "",
    default_max_tokens: int = 100,
    chat_style: ServedStyle | None = None,
) -> CompletionServer:
    """A server bound to `host:port` (0 picks a free port; see `server.url`), not yet serving.

    Run `server.serve_forever()` (in a thread, for tests) and stop it with `server.shutdown()`.
    `max_prompt_tokens` defaults to the model's context length. `samplers` is the chain
    (as specs, e.g. a run's `sampling.samplers`) for requests that give no sampler field;
    None: OpenAI's defaults (temperature 1, no filter). `example_prompt` and
    `default_max_tokens` (at most the cap) are what the page starts with. `chat_style` is
    the prompt style chat requests are written in (`ServedStyle.of` a loaded run's);
    None: the built-in `chat` style, for a model that has none of its own.
    """
    service = ModelService(
        model, tokenizer, model_name=model_name, max_concurrent=max_concurrent, max_queue=max_queue,
        queue_timeout=queue_timeout, max_new_tokens_cap=max_new_tokens_cap, max_prompt_tokens=max_prompt_tokens,
        default_chain=DefaultChain.of(samplers), chat_style=chat_style,
    )
    try:
        return CompletionServer(
            (host, port), service, page_template(), log_requests=log_requests,
            example_prompt=example_prompt, default_max_tokens=default_max_tokens,
        )
    except OSError as err:
        raise GptkitError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve_forever(model: GPTModel, tokenizer: Tokenizer, *, console: Console | None = None, **options: Any) -> None:
    """Serve until Ctrl-C, printing where. `options` are `make_server`'s."""
    console = console or Console()
    server = make_server(model, tokenizer, **{"log_requests": True, **options})
    url = server.url
    console.print(f"serving [bold]{server.service.model_name}[/bold]: demo {url}  API {url}v1  (Ctrl-C stops)", soft_wrap=True)
    if not is_loopback(str(server.server_address[0])):
        console.print("[yellow]warning:[/yellow] listening beyond this machine, with no authentication", soft_wrap=True)
    sys.stdout.flush()  # the URL must reach a pipe (a test, a supervisor) before the first request
    # Ctrl-C stops uvicorn, which then raises it again: KeyboardInterrupt, unless SIGINT is ignored
    # (a background job's), when it just returns. Stopped either way.
    with contextlib.suppress(KeyboardInterrupt):
        try:
            server.serve_forever()
        finally:
            server.server_close()
    console.print("stopped")
