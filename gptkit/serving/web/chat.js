// The demo page's chat mode: the conversation, each turn streamed from /v1/chat/completions.
// Inlined into index.html by gptkit/serving/page.py, after the page's main script, whose helpers
// ($, events, requestSettings, problemOf, setBusy, controller, escapeHtml) it uses.
"use strict";
const conversation = [];  // chat mode: the exchanges so far, as {role, content}, which each request sends again
let forgotten = 0;  // chat mode: how many of the oldest exchanges no longer fit the model's context, so go unsent

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "you" : "model";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  box.append(who, body);
  $("chat-log").append(box);
  return body;
}

// The turn's request, the oldest exchanges left out while the server says the conversation is longer
// than the model's context: as the terminal chat does, the model sees the newest whole exchanges that fit.
async function postTurn(system, text) {
  for (;;) {
    const messages = [
      ...(system ? [{ role: "system", content: system }] : []), ...conversation.slice(2 * forgotten), { role: "user", content: text },
    ];
    const body = { ...requestSettings(), messages, stream: true, stream_options: { include_usage: true } };
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
    });
    if (response.ok) return response;
    const problem = await response.json().catch(() => null);
    if (problem?.error?.code !== "context_length_exceeded" || 2 * forgotten >= conversation.length) {
      throw new Error(problem?.error?.message ?? `HTTP ${response.status}`);
    }
    forgotten += 1;
    [...$("chat-log").children].slice(0, 2 * forgotten).forEach((box) => {
      box.classList.add("forgotten");
      box.title = "no longer in the model's context";
    });
  }
}

// One chat turn: the conversation so far and the new message go to /v1/chat/completions, whose
// server writes them in the model's prompt style; the reply streams into its own bubble.
async function send() {
  const text = $("chat-input").value.trim();
  if (!text || controller) return;
  const system = $("system").value.trim();
  $("chat-input").value = "";
  const asked = addMessage("user", text);
  const answer = addMessage("assistant", "");
  answer.parentElement.scrollIntoView({ block: "end" });
  $("settings").textContent = "";
  $("error").textContent = "";
  controller = new AbortController();
  setBusy(true);
  let reply = "";
  let kept = false;
  try {
    const response = await postTurn(system, text);
    let finish = null;
    let usage = null;
    for await (const event of events(response)) {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      const choice = event.choices?.[0];
      if (choice?.delta?.content) { reply += choice.delta.content; answer.textContent = reply; }
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
    kept = true;
    let line = `finished: <b>${escapeHtml(String(finish))}</b>`;
    if (usage) line += ` &middot; ${usage.prompt_tokens} prompt + ${usage.completion_tokens} generated tokens`;
    if (reply === "") line += " (nothing generated: the model ended its reply at once)";
    if (forgotten) line += `<br>the model no longer sees the first ${forgotten} exchange(s): they do not fit its context`;
    $("settings").innerHTML = line;
  } catch (err) {
    // Stopped: the reply is kept as far as it came, as the terminal chat keeps it; failed: the turn is taken back.
    kept = err.name === "AbortError";
    if (kept) $("settings").textContent = "stopped";
    else $("error").textContent = err.message;
  } finally {
    if (kept) {
      conversation.push({ role: "user", content: text }, { role: "assistant", content: reply });
    } else {
      asked.parentElement.remove();
      answer.parentElement.remove();
      $("chat-input").value = text;
    }
    controller = null;
    setBusy(false);
  }
}

function newChat() {
  conversation.length = 0;
  forgotten = 0;
  $("chat-log").textContent = "";
  $("settings").textContent = "";
  $("error").textContent = "";
  $("chat-input").focus();
}

$("send").addEventListener("click", send);
$("new-chat").addEventListener("click", newChat);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
