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

Only the standard library's `ThreadingHTTPServer` is used: one thread per
connection, no new dependency. This file is the routes: what each path answers,
in terms of the engine and the OpenAI shapes. The HTTP mechanics under them
(body limits, JSON replies, event streams, clients that leave) are
`gptkit.serving.transport`; the request schemas and their errors
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
* Forward passes are serialised by one lock per model, taken around each step of
  the token iterator: up to `max_concurrent` generations interleave token by token,
  so a long one does not hold a short one up until it ends, and no two threads
  ever run the model (or touch its mode) at once.
* Generations past `max_concurrent` wait up to `queue_timeout` seconds in a queue
  of `max_queue`; beyond that they are answered 429.
* A client that goes away stops its generation at the next token and frees its slot.
* There is no authentication: it listens on loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rich.console import Console

from gptkit.errors import GptkitError
from gptkit.model.gpt import GPTModel
from gptkit.serving.chat_schema import ChatCompletionRequest
from gptkit.serving.engine import Job, ModelService, ServedStyle
from gptkit.serving.openai_replies import ChatReplies, Replies, TextReplies, model_card
from gptkit.serving.openai_schema import (
    ApiError,
    CompletionRequest,
    GenerationFields,
    parse_request,
)
from gptkit.serving.page import PAGE_POLICY, page_template, render_page
from gptkit.serving.request_sampling import DefaultChain
from gptkit.serving.transport import ApiHandler, ApiServer, ClientGone, is_loopback

if TYPE_CHECKING:
    from gptkit.data.tokenizer import (
        Tokenizer,  # or any registered tokenizer: encode, decode_bytes, eot_id
    )

# --- the routes -------------------------------------------------------------------


class Handler(ApiHandler):
    """Each method's routes in a table, then what each path answers."""

    server: CompletionServer
    release_slot: Callable[[], None]  # set per POST: frees its generation slot (a second call does nothing)
    server_version = "gptkit"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        routes: dict[str, Callable[[], None]] = {
            "/": self._page,
            "/index.html": self._page,
            "/v1/models": self._models,
            f"/v1/models/{self.server.service.model_name}": self._model,
            "/health": self._health,
            "/api/info": self._info,
        }
        if path not in routes:
            self.send_api_error(ApiError(404, f"no such endpoint: GET {path}", code="not_found"))
            return
        routes[path]()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        # Each path's request schema, and the route that answers it.
        routes: dict[str, tuple[type[GenerationFields], Callable[[list[Job]], None]]] = {
            "/v1/completions": (CompletionRequest, lambda jobs: self._openai(jobs, TextReplies(self.server.service, jobs))),
            "/v1/chat/completions": (ChatCompletionRequest, lambda jobs: self._openai(jobs, ChatReplies(self.server.service, jobs))),
            "/api/generate": (CompletionRequest, self._generate),
        }
        try:
            body = self.read_body()  # first: a body left unread would be taken for the next request
            if path not in routes:
                raise ApiError(404, f"no such endpoint: POST {path}", code="not_found")
            schema, route = routes[path]
            jobs = self.server.service.prepare(parse_request(body, schema))
            with contextlib.ExitStack() as slot:
                slot.enter_context(self.server.service.slots.hold())
                # Routes call this as soon as the last token is made: the slot is free before the
                # reply's last bytes go out, so a client holding a whole reply never sees it taken.
                self.release_slot = slot.close
                route(jobs)
        except ApiError as err:
            self.send_api_error(err)
        except ClientGone:
            pass
        except Exception:  # noqa: BLE001  # a bug, not the client's doing: logged in full, answered without details
            traceback.print_exc()
            self.send_failure(ApiError(500, "the server failed to generate; see its log", kind="server_error"))

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self.send_api_error(ApiError(405, f"{self.command} is not supported here", code="method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    # -- GET --

    def _page(self) -> None:
        self.send_bytes(200, "text/html; charset=utf-8", self.server.page, {"Content-Security-Policy": PAGE_POLICY})

    def _models(self) -> None:
        self.send_json(200, {"object": "list", "data": [model_card(self.server.service)]})

    def _model(self) -> None:
        self.send_json(200, model_card(self.server.service))

    def _health(self) -> None:
        slots = self.server.service.slots  # unlocked reads: a monitor needs a recent figure, not an exact one
        self.send_json(200, {"status": "ok", "active": slots.active, "waiting": slots.waiting, "limit": slots.limit, "max_queue": slots.max_waiting})

    def _info(self) -> None:
        service = self.server.service
        chain = service.default_chain
        self.send_json(200, {
            "model": service.model_name, "context_length": service.context_length,
            "max_tokens_cap": service.max_new_tokens_cap, "max_prompt_tokens": service.max_prompt_tokens,
            "example_prompt": self.server.example_prompt, "default_max_tokens": self.server.default_max_tokens,
            "default_samplers": list(chain.specs), "default_fields": chain.fields, **service.chat_style.describe(),
        })

    # -- POST: each has its slot, and ends the reply itself --

    def _deltas(self, job: Job) -> contextlib.closing[Generator[str, None, None]]:
        # Closed on the way out of a route, inside its slot: a write that fails mid-stream
        # ends the generation (and its hold on the model) before the slot is given back.
        return contextlib.closing(self.while_connected(self.server.service.run(job)))

    def _openai(self, jobs: list[Job], replies: Replies) -> None:
        """An OpenAI endpoint's answer, whole or as server-sent events ending with [DONE]; `replies` has its shapes."""
        service = self.server.service
        if not jobs[0].request.stream:
            texts = []
            for job in jobs:
                with self._deltas(job) as deltas:
                    texts.append("".join(deltas))
            logprobs = [service.logprobs(job) for job in jobs]
            self.release_slot()
            self.send_json(200, replies.whole(texts, logprobs))
            return
        self.start_events()
        for chunk in replies.opening():
            self.send_event(chunk)
        for i, job in enumerate(jobs):
            if i:  # the choice before is done; the last one's finish waits until the slot is free
                self.send_event(replies.finish(jobs[i - 1]))
            for chunk in replies.start(job):
                self.send_event(chunk)
            with self._deltas(job) as deltas:
                for delta in deltas:
                    if delta:
                        self.send_event(replies.delta(job, delta))
        self.release_slot()
        self.send_event(replies.finish(jobs[-1]))
        options = jobs[0].request.stream_options
        if options is not None and options.include_usage:
            self.send_event(replies.usage())
        self.send_event(b"[DONE]")
        self.end_events()

    def _generate(self, jobs: list[Job]) -> None:
        """The page's stream: one settings event, text events, a logprobs event if asked for, one done event."""
        if len(jobs) != 1:
            param = "n" if jobs[0].request.n != 1 else "prompt"
            raise ApiError(400, f"/api/generate streams one completion, and this request asks for {len(jobs)}: send one prompt and n 1 (POST /v1/completions makes several)", param=param)
        [job] = jobs
        service = self.server.service
        self.start_events()
        self.send_event({"type": "settings", "model": service.model_name, "settings": job.settings()})
        started = time.perf_counter()
        with self._deltas(job) as deltas:
            for delta in deltas:
                if delta:
                    self.send_event({"type": "text", "text": delta})
        elapsed = time.perf_counter() - started
        logprobs = service.logprobs(job)
        self.release_slot()
        if logprobs is not None:
            # With the text the offsets put before the completion: the prompt as its tokens spell it, when echoed.
            self.send_event({"type": "logprobs", "prompt": job.echo, "logprobs": logprobs})
        self.send_event({"type": "done", "finish_reason": job.finish_reason, "usage": job.usage(), "seconds": round(elapsed, 3)})
        self.end_events()


class CompletionServer(ApiServer):
    """The server `make_server` builds: `Handler`'s routes over one `ModelService` and the demo page."""

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
        super().__init__(address, Handler, log_requests=log_requests)


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
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()
