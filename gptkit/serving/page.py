"""The demo page: gptkit/serving/web/index.html with the run's defaults filled in, and the policy it is served under.

The page has two modes: "complete" continues a prompt through /api/generate,
"chat" keeps a conversation and streams each reply from /v1/chat/completions.
It opens in chat mode for a model finetuned on instructions, which is meant to
be talked to, and in complete mode for any other.
"""

from __future__ import annotations

import html
from importlib import resources

from gptkit.serving.openai_schema import NEUTRAL_SAMPLING, SAMPLER_FIELDS
from gptkit.serving.request_sampling import DefaultChain, spec_name

SCRIPTS = ("chat.js", "token_probs.js")  # inlined into index.html
# Everything the page needs is inline or same-origin; nothing else may load.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:"


def page_template() -> bytes:
    """index.html with its scripts inlined (each `{{script NAME}}` line is web/NAME), the other placeholders unfilled.

    The page is served as one file, so it needs nothing else to load; its chat mode and
    its probability view live in files of their own so that none is too long to read.
    """
    web = resources.files("gptkit.serving").joinpath("web")
    page = web.joinpath("index.html").read_text(encoding="utf-8")
    for name in SCRIPTS:
        page = page.replace("{{script " + name + "}}", web.joinpath(name).read_text(encoding="utf-8"))
    return page.encode("utf-8")


def render_page(template: bytes, chain: DefaultChain, example_prompt: str, max_tokens: int, mode: str = "complete") -> bytes:
    """The demo page with the run's example prompt, its chain's values and the mode it opens in filled in.

    Filled into the HTML itself, not fetched by the page afterwards: a user who types
    at once finds the run's defaults already there, and nothing overwrites what they typed.
    The page sends no sampler field unless one is changed, so the server applies the
    run's chain as it stands, whatever the fields can show of it.
    """
    fields = chain.fields or NEUTRAL_SAMPLING
    names = " \u2192 ".join(spec_name(spec) for spec in chain.specs) if chain.specs else "none: plain draws from the model"
    note = f"the run's sampler chain: {names}"
    if chain.fields is None:
        note += " (not expressible in these fields: changing one replaces the chain)"
    values = {
        "prompt": example_prompt, "max_tokens": str(max_tokens), "chain": note, "mode": mode,
        **{name: f"{fields[name]:g}" for name in SAMPLER_FIELDS},
    }
    page = template.decode("utf-8")
    for name, value in values.items():
        page = page.replace("{{" + name + "}}", html.escape(value))
    return page.encode("utf-8")
