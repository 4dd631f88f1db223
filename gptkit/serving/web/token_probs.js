// The demo page's probability view: each token of the prompt and of the completion coloured by the model's
// probability of it, given the text before it; hovering one shows its log-probability and the likeliest
// alternatives. The numbers are the `logprobs` object /api/generate sends after the text, in the API's own
// shape (tokens, token_logprobs, top_logprobs, text_offset). Inlined into index.html by gptkit/serving/page.py
// after the page's main script, whose helpers ($, MARKS) it uses.
"use strict";
const TOP_ALTERNATIVES = 5;  // asked for with each generation while the view is on (OpenAI's own limit)

// Green for a likely token, through yellow, to red for one the model gave 1 in 10,000 or less.
function probabilityColour(logprob) {
  const t = Math.min(1, Math.max(0, 1 + logprob / Math.LN10 / 4));
  return `hsla(${Math.round(120 * t)}, 80%, 50%, 0.35)`;
}

function percent(logprob) {
  const p = 100 * Math.exp(logprob);
  return p >= 0.1 ? `${p.toFixed(1)}%` : `${p.toExponential(1)}%`;
}

// The spans of the tokens that start in text[from, to), each holding its piece of the text. A token
// that is part of a character split across tokens holds nothing (the character's last token shows it),
// nor does one after the text's end (the end-of-text token).
function tokenSpans(scores, text, from, to) {
  const fragment = document.createDocumentFragment();
  const offsets = scores.text_offset;
  offsets.forEach((start, i) => {
    const end = Math.min(i + 1 < offsets.length ? offsets[i + 1] : to, to);
    if (start < from || start >= end) return;
    const piece = text.slice(start, end);
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = $("show-ws").checked ? [...piece].map((c) => MARKS[c] ?? c).join("") : piece;
    span.dataset.index = String(i);
    const logprob = scores.token_logprobs[i];
    if (logprob !== null) {
      span.dataset.logprob = String(logprob);
      span.style.background = probabilityColour(logprob);
    }
    fragment.append(span);
  });
  return fragment;
}

// What hovering token i shows: its log-probability and probability, then the likeliest tokens there.
function describeToken(scores, i) {
  const token = JSON.stringify(scores.tokens[i]);
  const logprob = scores.token_logprobs[i];
  if (logprob === null) return `${token}\nthe first token: nothing comes before it to predict it from`;
  const lines = [`${token}  logprob ${logprob.toFixed(3)} (${percent(logprob)})`, "likeliest here:"];
  const alternatives = Object.entries(scores.top_logprobs[i]).sort((a, b) => b[1] - a[1]);
  for (const [alternative, lp] of alternatives) {
    const chosen = alternative === scores.tokens[i] ? "  \u2190 chosen" : "";
    lines.push(`  ${JSON.stringify(alternative).padEnd(14)} ${lp.toFixed(3)} (${percent(lp)})${chosen}`);
  }
  return lines.join("\n");
}

// The prompt and the completion as coloured tokens; `prompt` is the text the offsets put before the completion.
function showScoredTokens(prompt, completion, scores) {
  const text = prompt + completion;
  $("prompt-echo").replaceChildren(tokenSpans(scores, text, 0, prompt.length));
  $("generated").replaceChildren(tokenSpans(scores, text, prompt.length, text.length));
  $("probs-note").textContent = "each token coloured by the model's probability of it after the text before it "
    + "(green: likely; red: 1 in 10,000 or less); hover a token for its log-probability and the alternatives";
}

function hideTokenInfo() {
  $("token-info").hidden = true;
}

$("output").addEventListener("mouseover", (e) => {
  const span = e.target.closest?.(".tok");
  if (!span || !scored) return hideTokenInfo();
  const info = $("token-info");
  info.textContent = describeToken(scored.logprobs, Number(span.dataset.index));
  const box = span.getBoundingClientRect();
  info.style.left = `${Math.round(box.left)}px`;
  info.style.top = `${Math.round(box.bottom + 6)}px`;
  info.hidden = false;
});
$("output").addEventListener("mouseleave", hideTokenInfo);
