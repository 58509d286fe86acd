// The playground: chat with streaming tokens, transcription with an interactive transcript,
// image generation and speech. It calls the dashboard's own /dashboard/api/v1/... endpoints
// (session cookie + XSRF header), which route and record exactly like /v1.
"use strict";

(() => {
  const {xsrf, el, errorMessage} = window.inferclub;
  const API = "/dashboard/api/v1";
  let models = JSON.parse(document.getElementById("models-data").textContent);

  // -- tabs and model pickers ------------------------------------------------------------
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const panes = [...document.querySelectorAll(".pane")];
  const HASH = {llm: "chat", stt: "transcription", image: "image", tts: "speech"};

  const showTab = (type) => {
    for (const t of tabs) t.setAttribute("aria-selected", String(t.dataset.type === type));
    for (const p of panes) p.hidden = p.dataset.type !== type;
    history.replaceState(null, "", `#${HASH[type]}`);
  };
  for (const t of tabs) t.addEventListener("click", () => showTab(t.dataset.type));
  const fromHash = Object.keys(HASH).find((k) => `#${HASH[k]}` === window.location.hash);
  if (fromHash) showTab(fromHash);

  const fillSelects = () => {
    for (const pane of panes) {
      const select = pane.querySelector(".model-select");
      const current = select.value;
      const options = models.filter((m) => m.type === pane.dataset.type);
      select.replaceChildren(...options.map((m) =>
        el("option", {value: m.model, selected: m.model === current}, `${m.model}  (${m.provider})`)));
      pane.querySelector(".no-models").hidden = options.length > 0;
      pane.classList.toggle("disabled", options.length === 0);
      const tab = tabs.find((t) => t.dataset.type === pane.dataset.type);
      tab.classList.toggle("empty", options.length === 0);
    }
    sttFeatures();
  };

  const refreshModels = async () => {
    try {
      const resp = await fetch("/dashboard/api/models");
      if (resp.ok) { models = (await resp.json()).models; fillSelects(); }
    } catch (err) { /* keep the current list */ }
  };
  setInterval(refreshModels, 10000);

  const modelInfo = (type, model) => models.find((m) => m.type === type && m.model === model);

  const post = (path, body, json = true) => fetch(API + path, {
    method: "POST",
    headers: json ? {"Content-Type": "application/json", "X-XSRFToken": xsrf()} : {"X-XSRFToken": xsrf()},
    body: json ? JSON.stringify(body) : body,
  });

  const showMeta = (node, resp, t0, extra) => {
    const id = resp.headers.get("X-Request-Id");
    const provider = resp.headers.get("X-InferClub-Provider");
    node.replaceChildren(
      id ? el("a", {href: `/dashboard/requests/${id}`, class: "request-link"}, id) : "",
      provider ? ` · served by ${provider}` : "",
      ` · ${Math.round(performance.now() - t0)} ms`,
      extra ? ` · ${extra}` : "");
  };

  const showError = (node, message) => node.replaceChildren(el("span", {class: "error"}, message));

  // -- chat --------------------------------------------------------------------------------
  const chatLog = document.getElementById("chat-log");
  const chatInput = document.getElementById("chat-input");
  const chatSend = document.getElementById("chat-send");
  const chatStop = document.getElementById("chat-stop");
  const chatMeta = document.getElementById("chat-meta");
  let messages = [];
  let abort = null;

  const bubble = (role, text) => {
    const node = el("div", {class: `msg ${role}`}, el("div", {class: "who"}, role === "user" ? "You" : "Assistant"),
      el("div", {class: "text"}, text));
    chatLog.append(node);
    chatLog.scrollTop = chatLog.scrollHeight;
    return node;
  };

  document.getElementById("chat-clear").addEventListener("click", () => {
    if (abort) abort.abort();
    messages = [];
    chatLog.replaceChildren();
    chatMeta.replaceChildren();
  });

  chatInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      document.getElementById("chat-form").requestSubmit();
    }
  });
  chatStop.addEventListener("click", () => abort && abort.abort());

  // The request for the chosen API, with the settings, and how to read its stream: the text
  // piece and the output token count (from the final usage) of each event.
  const chatRequest = (model) => {
    const system = document.getElementById("chat-system").value.trim();
    const temperature = document.getElementById("chat-temperature").value;
    const maxTokens = document.getElementById("chat-max-tokens").value;
    const settings = {};
    if (temperature !== "") settings.temperature = Number(temperature);
    if (document.getElementById("chat-api").value === "responses") {
      if (maxTokens !== "") settings.max_output_tokens = Number(maxTokens);
      if (system) settings.instructions = system;
      return {
        path: "/responses",
        body: {model, input: messages, stream: true, ...settings},
        read: (data) => ({
          piece: data.type === "response.output_text.delta" ? data.delta || "" : "",
          usage: data.type === "response.completed" && data.response && data.response.usage
            ? data.response.usage.output_tokens : null,
        }),
      };
    }
    if (maxTokens !== "") settings.max_tokens = Number(maxTokens);
    const all = system ? [{role: "system", content: system}, ...messages] : messages;
    return {
      path: "/chat/completions",
      // Usage comes in a last chunk: its token count makes the speed shown below exact.
      body: {model, messages: all, stream: true, stream_options: {include_usage: true}, ...settings},
      read: (data) => {
        const delta = data.choices && data.choices[0] && data.choices[0].delta;
        return {piece: (delta && delta.content) || "", usage: data.usage ? data.usage.completion_tokens : null};
      },
    };
  };

  // Output tokens per second, from the first token to the last; without a usage report the
  // engine's token count is unknown and nothing is claimed.
  const showSpeed = (tokens, tFirst, tLast) => {
    delete chatMeta.dataset.tokensPerSecond;
    if (tokens === null || tFirst === null || tLast === null || tLast - tFirst < 1) {
      if (tokens !== null) chatMeta.append(` · ${tokens} tokens`);
      return;
    }
    const rate = (tokens - 1) / ((tLast - tFirst) / 1000);
    chatMeta.dataset.tokensPerSecond = rate.toFixed(1);
    chatMeta.append(` · ${tokens} tokens, ${rate.toFixed(1)} tokens/s`);
  };

  document.getElementById("chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const content = chatInput.value.trim();
    const model = document.getElementById("chat-model").value;
    if (!content || !model || abort) return;
    chatInput.value = "";
    messages.push({role: "user", content});
    bubble("user", content);
    const answer = bubble("assistant", "");
    const text = answer.querySelector(".text");
    answer.classList.add("streaming");
    chatSend.disabled = true;
    chatStop.hidden = false;
    abort = new AbortController();
    const t0 = performance.now();
    let ttft = null;
    let chunks = 0;
    let reply = "";
    let tokens = null;
    let tLast = null;
    const {path, body, read} = chatRequest(model);
    try {
      const resp = await fetch(`${API}${path}`, {
        method: "POST", signal: abort.signal,
        headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf()},
        body: JSON.stringify(body),
      });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let done = false;
      while (!done) {
        const {value, done: end} = await reader.read();
        if (end) break;
        buffer += decoder.decode(value, {stream: true});
        const events = buffer.split(/\r?\n\r?\n/);
        buffer = events.pop();
        for (const event of events) {
          const payload = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trimStart()).join("\n");
          if (!payload) continue;
          if (payload === "[DONE]") { done = true; break; }
          const data = JSON.parse(payload);
          if (data.error) throw new Error(data.error.message || "the provider failed mid-stream");
          const {piece, usage} = read(data);
          if (usage !== null) tokens = usage;
          if (piece) {
            if (ttft === null) ttft = performance.now() - t0;
            tLast = performance.now();
            chunks += 1;
            reply += piece;
            text.textContent = reply;
            chatLog.scrollTop = chatLog.scrollHeight;
          }
        }
      }
      messages.push({role: "assistant", content: reply});
      showMeta(chatMeta, resp, t0, `first token after ${Math.round(ttft || 0)} ms, ${chunks} chunks`);
      showSpeed(tokens, ttft === null ? null : t0 + ttft, tLast);
    } catch (err) {
      if (err.name === "AbortError") {
        answer.classList.add("stopped");
        if (reply) messages.push({role: "assistant", content: reply});
      } else {
        answer.classList.add("failed");
        text.append(el("span", {class: "error"}, (reply ? "\n" : "") + err.message));
        messages.pop();
      }
    } finally {
      answer.classList.remove("streaming");
      answer.dataset.done = "true";
      chatSend.disabled = false;
      chatStop.hidden = true;
      abort = null;
    }
  });

  // -- transcription -----------------------------------------------------------------------
  const sttModel = document.getElementById("stt-model");
  const sttFile = document.getElementById("stt-file");
  const sttGo = document.getElementById("stt-go");
  const sttAudio = document.getElementById("stt-audio");
  const sttMeta = document.getElementById("stt-meta");
  const sttRecord = document.getElementById("stt-record");
  const recordStatus = document.getElementById("stt-record-status");
  const transcript = document.getElementById("transcript");
  let audioBlob = null;
  let audioName = "audio";
  let recorder = null;
  let words = [];
  let wordNodes = [];
  let segmentNodes = [];
  let current = -1;

  function sttFeatures() {
    const info = modelInfo("stt", sttModel.value);
    const stamps = info && info.features.includes("timestamps");
    document.getElementById("stt-features").textContent = info
      ? (stamps ? "timestamps: click a word to jump there" : "no timestamps: plain text") : "";
  }
  sttModel.addEventListener("change", sttFeatures);

  const useAudio = (blob, name) => {
    audioBlob = blob;
    audioName = name;
    if (sttAudio.src) URL.revokeObjectURL(sttAudio.src);
    sttAudio.src = URL.createObjectURL(blob);
    sttAudio.hidden = false;
    sttGo.disabled = false;
  };

  sttFile.addEventListener("change", () => {
    if (sttFile.files[0]) useAudio(sttFile.files[0], sttFile.files[0].name);
  });

  sttRecord.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({audio: true});
      const parts = [];
      recorder = new MediaRecorder(stream);
      recorder.addEventListener("dataavailable", (e) => parts.push(e.data));
      recorder.addEventListener("stop", () => {
        for (const track of stream.getTracks()) track.stop();
        const type = recorder.mimeType || "audio/webm";
        const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
        useAudio(new Blob(parts, {type}), `recording.${ext}`);
        recorder = null;
        sttRecord.textContent = "● Record";
        sttRecord.classList.remove("recording");
        recordStatus.textContent = "recorded";
      });
      recorder.start();
      sttRecord.textContent = "■ Stop";
      sttRecord.classList.add("recording");
      recordStatus.textContent = "recording…";
    } catch (err) {
      recordStatus.textContent = `cannot record: ${err.message}`;
    }
  });

  const clock = (t) => {
    const m = Math.floor(t / 60);
    return `${m}:${(t - m * 60).toFixed(1).padStart(4, "0")}`;
  };

  const seek = (t) => {
    sttAudio.currentTime = t;
    highlight(t);
  };

  // The word being spoken: the last one started, until a second after its end.
  function highlight(t) {
    let lo = 0, hi = words.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (words[mid].start <= t + 1e-3) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    if (found >= 0 && t > words[found].end + 1) found = -1;
    if (found !== current) {
      if (current >= 0) wordNodes[current].classList.remove("current");
      if (found >= 0) {
        wordNodes[found].classList.add("current");
        if (!sttAudio.paused) wordNodes[found].scrollIntoView({block: "nearest"});
      }
      current = found;
    }
    for (const seg of segmentNodes) {
      seg.classList.toggle("current", t >= Number(seg.dataset.start) && t < Number(seg.dataset.end));
    }
  }

  for (const type of ["timeupdate", "seeked", "seeking"]) {
    sttAudio.addEventListener(type, () => highlight(sttAudio.currentTime));
  }
  sttAudio.addEventListener("play", () => {
    const frame = () => {
      highlight(sttAudio.currentTime);
      if (!sttAudio.paused && !sttAudio.ended) requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  });

  const renderTranscript = (data) => {
    words = (data.words || []).filter((w) => typeof w.start === "number")
      .sort((a, b) => a.start - b.start);
    const segments = (data.segments && data.segments.length) ? data.segments
      : [{start: words.length ? words[0].start : 0, end: Infinity, text: data.text || ""}];
    wordNodes = [];
    segmentNodes = [];
    current = -1;
    let w = 0;
    const blocks = segments.map((seg, si) => {
      const last = si === segments.length - 1;
      const body = el("span", {class: "seg-text"});
      const mine = [];
      while (w < words.length && (last || words[w].start < seg.end)) mine.push(w++);
      if (mine.length) {
        for (const i of mine) {
          const word = words[i];
          const node = el("span", {class: "word", tabindex: "0", dataset: {index: i, start: word.start, end: word.end}},
            String(word.word).trim());
          node.addEventListener("click", (e) => { e.stopPropagation(); seek(word.start); });
          node.addEventListener("keydown", (e) => { if (e.key === "Enter") seek(word.start); });
          wordNodes[i] = node;
          body.append(node, " ");
        }
      } else {
        body.textContent = String(seg.text || "").trim();
      }
      const block = el("p", {class: "segment", dataset: {start: seg.start, end: seg.end === Infinity ? 1e9 : seg.end}},
        el("button", {type: "button", class: "seg-time", title: "Play from here"}, clock(seg.start)),
        body);
      block.addEventListener("click", () => seek(seg.start));
      segmentNodes.push(block);
      return block;
    });
    transcript.replaceChildren(...blocks);
    transcript.classList.add("interactive");
  };

  sttGo.addEventListener("click", async () => {
    const model = sttModel.value;
    if (!audioBlob || !model) return;
    const info = modelInfo("stt", model);
    const stamps = info && info.features.includes("timestamps");
    const form = new FormData();
    form.append("file", audioBlob, audioName);
    form.append("model", model);
    if (stamps) {
      form.append("response_format", "verbose_json");
      form.append("timestamp_granularities[]", "word");
      form.append("timestamp_granularities[]", "segment");
    } else {
      form.append("response_format", "text");
    }
    sttGo.disabled = true;
    transcript.replaceChildren(el("p", {class: "muted"}, "Transcribing…"));
    transcript.classList.remove("interactive", "plain");
    const t0 = performance.now();
    try {
      const resp = await post("/audio/transcriptions", form, false);
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const ctype = resp.headers.get("Content-Type") || "";
      const downgraded = resp.headers.get("X-InferClub-Downgraded");
      if (ctype.includes("json")) {
        const data = await resp.json();
        if ((data.words && data.words.length) || (data.segments && data.segments.length)) renderTranscript(data);
        else { transcript.replaceChildren(el("p", {}, data.text || "")); transcript.classList.add("plain"); }
      } else {
        transcript.replaceChildren(el("p", {}, (await resp.text()).trim()));
        transcript.classList.add("plain");
      }
      transcript.dataset.done = "true";
      showMeta(sttMeta, resp, t0, downgraded ? "no timestamps from this service" : "");
    } catch (err) {
      transcript.replaceChildren();
      showError(sttMeta, err.message);
    } finally {
      sttGo.disabled = false;
    }
  });

  // -- images ------------------------------------------------------------------------------
  document.getElementById("image-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const meta = document.getElementById("image-meta");
    const result = document.getElementById("image-result");
    const button = document.getElementById("image-go");
    const model = document.getElementById("image-model").value;
    if (!model) return;
    button.disabled = true;
    result.replaceChildren(el("p", {class: "muted"}, "Generating…"));
    const t0 = performance.now();
    try {
      const resp = await post("/images/generations", {
        model, prompt: document.getElementById("image-prompt").value,
        n: 1, size: document.getElementById("image-size").value, response_format: "b64_json",
      });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const data = await resp.json();
      const item = (data.data || [])[0];
      if (!item) throw new Error("the provider returned no image");
      const src = item.b64_json ? `data:image/png;base64,${item.b64_json}` : item.url;
      result.replaceChildren(el("figure", {},
        el("img", {src, alt: document.getElementById("image-prompt").value, id: "generated-image"}),
        item.revised_prompt ? el("figcaption", {class: "muted small"}, item.revised_prompt) : null));
      showMeta(meta, resp, t0);
    } catch (err) {
      result.replaceChildren();
      showError(meta, err.message);
    } finally {
      button.disabled = false;
    }
  });

  // -- speech ------------------------------------------------------------------------------
  document.getElementById("tts-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const meta = document.getElementById("tts-meta");
    const result = document.getElementById("tts-result");
    const button = document.getElementById("tts-go");
    const model = document.getElementById("tts-model").value;
    const format = document.getElementById("tts-format").value;
    if (!model) return;
    button.disabled = true;
    const t0 = performance.now();
    try {
      const resp = await post("/audio/speech", {
        model, input: document.getElementById("tts-input").value,
        voice: document.getElementById("tts-voice").value || "alloy", response_format: format,
      });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const blob = await resp.blob();
      const url = URL.createObjectURL(blob);
      result.replaceChildren(
        el("audio", {controls: true, src: url, id: "speech-audio"}),
        el("a", {href: url, download: `speech.${format}`, class: "button small"}, "Download"));
      showMeta(meta, resp, t0, `${(blob.size / 1024).toFixed(1)} KiB`);
    } catch (err) {
      result.replaceChildren();
      showError(meta, err.message);
    } finally {
      button.disabled = false;
    }
  });

  fillSelects();
})();
