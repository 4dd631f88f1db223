"""Generations for the server: requests made into jobs, slots that bound how many run, one decoding thread.

`ModelService` checks a request against the server's model and limits, tokenises
it and resolves its seeds, length and samplers (`prepare`; fields a request leaves
out take the run's own chain, `DefaultChain`), making one job per choice, then
yields each job's text token by token (`run`). The jobs' tokens are made by one
background thread that owns the model (`batch_loop.BatchLoop`): every running
job is a row of one batch, one forward pass per step, so concurrent generations
cost one model call per token between them. `logprobs` scores a finished job's
tokens (`prompt_scoring`) under the lock that thread takes around each step.
`Slots` bounds how many requests run and how many wait.

A completion request makes `n` choices of each of its prompts, ordered prompt by
prompt as OpenAI orders them (prompt i's sample j is choice i * n + j). Sample j
is drawn with the request's seed + j: the first sample is what the same request
with `n` 1 gives, and no prompt's samples depend on the other prompts beside it.

A chat request's messages are written as a prompt in the `ServedStyle`: the
run's own prompt style when it was finetuned on instructions, else the built-in
`chat` style, so that the endpoint answers for any model. Its reply ends at the
style's stop strings as well as the request's, and starts after the space the
template puts before it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from gptkit.data.prompt_styles import ChatStyle
from gptkit.errors import DataError, GptkitError
from gptkit.generation.generate import TextStream, encode_prompt
from gptkit.generation.styled_reply import prompt_ids, reply_stops, strip_leading_space
from gptkit.hookspecs import PromptStyle
from gptkit.model.gpt import GPTModel
from gptkit.serving.batch_loop import BatchLoop
from gptkit.serving.chat_schema import ChatCompletionRequest
from gptkit.serving.openai_schema import (
    MAX_CHOICES,
    SAMPLER_FIELDS,
    ApiError,
    CompletionRequest,
    GenerationFields,
)
from gptkit.serving.prompt_scoring import TokenScore, score_tokens
from gptkit.serving.request_sampling import DefaultChain, Sampling, resolve_sampling
from gptkit.serving.token_logprobs import choice_logprobs, spell

if TYPE_CHECKING:
    from gptkit.data.tokenizer import (
        Tokenizer,  # or any registered tokenizer: encode, decode_bytes, eot_id
    )


@dataclass(frozen=True)
class ServedStyle:
    """The prompt style chat requests are written in, as a spec, and whether it is the model's own."""

    style: PromptStyle
    spec: dict[str, Any]  # {"name": ..., **params}, as a run's config.json stores it
    own: bool  # the run's own (its finetuning data's); False: the built-in chat style, for a model with none

    @classmethod
    def default(cls) -> ServedStyle:
        style = ChatStyle()
        return cls(style, {"name": "chat", **asdict(style)}, own=False)

    @classmethod
    def of(cls, style: PromptStyle | None, spec: dict[str, Any] | None) -> ServedStyle:
        """A model's own style (a loaded run's `prompt_style` and its spec), or the default when it has none."""
        if style is None or spec is None:
            return cls.default()
        return cls(style, dict(spec), own=True)

    def describe(self) -> dict[str, Any]:
        """How /v1/models and /api/info say which style chat requests get."""
        name = self.spec["name"]
        note = (
            f"chat messages are written in the model's own prompt style '{name}'" if self.own else
            f"the model has no prompt style of its own (it was not finetuned on instructions): "
            f"chat messages are written in the built-in '{name}' style"
        )
        return {"prompt_style": self.spec, "prompt_style_source": "model" if self.own else "default", "chat_note": note}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Job:
    """One choice of a validated request: its prompt tokenised, its settings resolved."""

    request: GenerationFields
    prompt_ids: list[int]
    seed: int
    max_tokens: int  # the request's, or the server's cap for a limit left out (or null)
    sampling: Sampling
    stop: tuple[str, ...] = ()  # where the reply ends: the request's stop strings, and a chat's style's
    id: str = field(default_factory=lambda: new_id("cmpl"))  # the request's: every choice shares it
    created: int = field(default_factory=lambda: int(time.time()))
    index: int = 0  # the choice's place in the reply
    sample: int = 0  # which of its prompt's n samples it is
    echo: str = ""  # the text before the completion in the reply: the prompt, when the request echoes it
    completion_ids: list[int] = field(default_factory=list)  # every token generated, end-of-text and stop strings included
    finish_reason: Literal["stop", "length"] = "length"

    @property
    def completion_tokens(self) -> int:
        return len(self.completion_ids)

    @property
    def samplers(self) -> list[Any]:
        return self.sampling.samplers

    @property
    def chat(self) -> bool:
        return isinstance(self.request, ChatCompletionRequest)

    def settings(self) -> dict[str, Any]:
        """What the generation runs with; a sampler field is None when the run's chain is not expressible in them."""
        fields = self.sampling.fields or {}
        return {
            **{name: fields.get(name) for name in SAMPLER_FIELDS}, "max_tokens": self.max_tokens,
            "stop": list(self.stop), "seed": self.seed, "samplers": self.sampling.names,
        }

    def usage(self) -> dict[str, int]:
        return total_usage([self])


def total_usage(jobs: Sequence[Job]) -> dict[str, int]:
    """The usage of a request's choices: each prompt's tokens once, however many samples it has, and every completion's."""
    n_prompt = sum(len(job.prompt_ids) for job in jobs if job.sample == 0)
    n_completion = sum(job.completion_tokens for job in jobs)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


class Slots:
    """At most `limit` generations at once; at most `max_waiting` more wait, each up to `timeout` seconds."""

    def __init__(self, limit: int, max_waiting: int, timeout: float) -> None:
        self.limit, self.max_waiting, self.timeout = limit, max_waiting, timeout
        self.active = 0
        self.waiting = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._cond:
            if self.active >= self.limit:
                if self.waiting >= self.max_waiting:
                    raise ApiError(429, f"the server is busy ({self.limit} generations running, {self.waiting} waiting); retry shortly", kind="rate_limit_error", code="server_busy")
                self.waiting += 1
                try:
                    free = self._cond.wait_for(lambda: self.active < self.limit, timeout=self.timeout)
                finally:
                    self.waiting -= 1
                if not free:
                    raise ApiError(429, f"no generation slot came free within {self.timeout:g} s; retry shortly", kind="rate_limit_error", code="server_busy")
            self.active += 1
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify()


class ModelService:
    """The model, its tokenizer, the limits, and the thread that decodes every job in one batch."""

    def __init__(
        self, model: GPTModel, tokenizer: Tokenizer, *, model_name: str, max_concurrent: int, max_queue: int,
        queue_timeout: float, max_new_tokens_cap: int, max_prompt_tokens: int | None,
        default_chain: DefaultChain | None = None, chat_style: ServedStyle | None = None,
    ) -> None:
        if max_concurrent < 1 or max_queue < 0 or max_new_tokens_cap < 1:
            raise GptkitError("max_concurrent and max_new_tokens_cap must be >= 1 and max_queue >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.context_length = model.cfg.context_length
        self.max_new_tokens_cap = max_new_tokens_cap
        self.max_prompt_tokens = max_prompt_tokens or self.context_length
        self.device = next(model.parameters()).device
        self.slots = Slots(max_concurrent, max_queue, queue_timeout)
        # One row per generation the slots let run; jobs past that (a request's n choices) wait for a row.
        self.batch = BatchLoop(self.model, max_concurrent)
        self.created = int(time.time())
        self.default_chain = default_chain if default_chain is not None else DefaultChain()
        self.chat_style = chat_style if chat_style is not None else ServedStyle.default()

    def prepare(self, request: GenerationFields) -> list[Job]:
        """A completion or chat request as its choices' jobs; ApiError if it asks for what this server cannot give."""
        # One model is served: a request for another would get a completion from a model it did not ask for.
        if request.model is not None and request.model != self.model_name:
            raise ApiError(
                404, f"the model '{request.model}' does not exist on this server; it serves '{self.model_name}' (GET /v1/models)",
                param="model", code="model_not_found",
            )
        # Left out or null, the limit is as many tokens as the server allows (OpenAI's reading of null).
        limit, asked = request.token_limit()
        max_tokens = self.max_new_tokens_cap if asked is None else asked
        if max_tokens > self.max_new_tokens_cap:
            raise ApiError(400, f"{limit} is {max_tokens}; this server allows at most {self.max_new_tokens_cap}", param=limit)
        if isinstance(request, ChatCompletionRequest):
            prompts, stop, param = [("the conversation", self._conversation(request))], reply_stops(self.chat_style.style, request.stop_strings), "messages"
        else:
            prompts, stop, param = self._prompts(request, max_tokens), request.stop_strings, "prompt"
        for what, ids in prompts:
            if len(ids) > self.max_prompt_tokens:
                # OpenAI's code for it: a chat client can tell it from other refusals and drop its oldest turns.
                raise ApiError(
                    400, f"{what} is {len(ids)} tokens; this server allows at most {self.max_prompt_tokens}", param=param,
                    code="context_length_exceeded",
                )
        # Always seeded, and the seed echoed: any reply can be reproduced.
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        job_id, created = new_id("chatcmpl" if isinstance(request, ChatCompletionRequest) else "cmpl"), int(time.time())
        sampling = resolve_sampling(request, self.default_chain)
        echo = isinstance(request, CompletionRequest) and request.echo
        return [
            Job(
                request, ids, (seed + j) % 2**63, max_tokens, sampling, stop=stop, id=job_id, created=created,
                index=i * request.n + j, sample=j, echo=spell(self.tokenizer, ids)[0] if echo else "",
            )
            for i, (_, ids) in enumerate(prompts) for j in range(request.n)
        ]

    def _prompts(self, request: CompletionRequest, max_tokens: int) -> list[tuple[str, list[int]]]:
        """Each prompt as (how a message names it, its token ids); ApiError for a prompt the model cannot take."""
        prompts = request.prompts
        choices = len(prompts) * request.n
        if choices > MAX_CHOICES:
            raise ApiError(400, f"the request asks for {choices} choices ({len(prompts)} prompts, n {request.n}); this server makes at most {MAX_CHOICES} per request", param="prompt")
        vocabulary = min(self.tokenizer.vocab_size, self.model.cfg.vocab_size)
        found = []
        for i, prompt in enumerate(prompts):
            where, what = ("prompt", "the prompt") if len(prompts) == 1 else (f"prompt.{i}", f"prompt {i}")
            if prompt == "" and max_tokens == 0:
                raise ApiError(400, f"{where}: the prompt is empty and max_tokens is 0: there is nothing to score or generate", param="prompt")
            outside = next((t for t in prompt if not 0 <= t < vocabulary), None) if isinstance(prompt, list) else None
            if outside is not None:
                raise ApiError(400, f"{where}: token id {outside} is outside the vocabulary (0 to {vocabulary - 1})", param="prompt")
            # "<|endoftext|>" in a prompt is one token, GPT-2's document separator; an empty prompt starts from it.
            found.append((what, encode_prompt(self.tokenizer, prompt)))
        return found

    def _conversation(self, request: ChatCompletionRequest) -> list[int]:
        """The messages as the served style writes them, as token ids; ApiError if the style cannot write them."""
        try:
            return prompt_ids(self.chat_style.style, request.conversation(), self.tokenizer)
        except DataError as err:  # a conversation ending with a reply; several turns for a one-turn style
            raise ApiError(400, f"messages: {err}", param="messages") from None

    def run(self, job: Job) -> Generator[str, None, None]:
        """Text deltas of `job`, one per generated token ("" when a token completes no text).

        A chat reply starts after the template's space (`strip_leading_space`). Closing
        the iterator stops the generation; it sets `job.finish_reason` once it ends.
        """
        deltas = self._deltas(job)
        return strip_leading_space(deltas) if job.chat else deltas

    def _deltas(self, job: Job) -> Generator[str, None, None]:
        if job.max_tokens == 0:  # a prompt to score: nothing to generate, and finish_reason stays "length"
            return
        generator = torch.Generator(device=self.device).manual_seed(job.seed)
        ticket = self.batch.submit(job.prompt_ids, job.max_tokens, job.samplers, generator=generator, eos_id=self.tokenizer.eot_id)
        text = TextStream(self.tokenizer, job.stop)
        try:
            while not text.done:
                token = ticket.next()
                if token is None:
                    break
                job.completion_ids.append(token)
                yield text.push(token)
            # Done early means end-of-text or a stop string; otherwise max_tokens ran out.
            job.finish_reason = "stop" if text.done else "length"
            yield text.close()
        finally:
            ticket.cancel()  # a stop string, or a reader that went away: the row is freed at the next step

    def logprobs(self, job: Job) -> dict[str, Any] | None:
        """The `logprobs` object of a finished job's choice, or None when its request asks for none.

        It covers the completion's tokens, after the prompt's when the request echoes it; every
        log-probability is the model's, before the samplers (`gptkit.serving.prompt_scoring`).
        """
        request = job.request
        if not isinstance(request, CompletionRequest) or request.logprobs is None:
            return None
        ids = job.prompt_ids + job.completion_ids
        first = 1 if request.echo else len(job.prompt_ids)
        with self.batch.lock:
            scores: list[TokenScore | None] = list(score_tokens(self.model, ids, request.logprobs, first))
        _, offsets = spell(self.tokenizer, job.completion_ids)
        if not request.echo:
            return choice_logprobs(self.tokenizer, job.completion_ids, scores, offsets)
        # The echoed prompt's first token has nothing before it to be scored from.
        _, prompt_offsets = spell(self.tokenizer, job.prompt_ids)
        offsets = prompt_offsets + [len(job.echo) + offset for offset in offsets]
        return choice_logprobs(self.tokenizer, ids, [None, *scores], offsets)
