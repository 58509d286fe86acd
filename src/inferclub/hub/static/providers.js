// The providers page: rendered from JSON, polled every few seconds; heartbeat ages tick every
// second, so a provider that stops heartbeating turns offline without a reload.
"use strict";

(() => {
  const {el, ago, duration, localTime} = window.inferclub;
  const root = document.getElementById("providers");
  const empty = document.getElementById("providers-empty");
  const deleteTemplate = document.getElementById("delete-form-template");
  let data = JSON.parse(document.getElementById("providers-data").textContent);
  let fetchedAt = performance.now();
  let lastShape = "";

  const TYPE_NAMES = {
    llm: "Language models", stt: "Speech to text", tts: "Text to speech",
    image: "Images", embedding: "Embeddings",
  };

  const age = (p) => p.heartbeat_age + (performance.now() - fetchedAt) / 1000;
  const isOnline = (p) => p.online && age(p) < data.online_window;

  // How the hub reaches the agent: it calls its callback URL, or the agent dialled in (a
  // tunnel, whose round-trip time the hub measures with its pings).
  const transportText = (p) => {
    if (p.transport !== "tunnel") return "callback";
    return p.tunnel_rtt_ms === null || p.tunnel_rtt_ms === undefined
      ? "tunnel" : `tunnel (rtt ${p.tunnel_rtt_ms.toFixed(1)} ms)`;
  };

  const gib = (bytes) => (bytes / 1024 ** 3).toFixed(1);

  const healthSummary = (h) => {
    const items = [];
    if (typeof h.uptime_s === "number") items.push(["Agent uptime", duration(h.uptime_s)]);
    if (Array.isArray(h.load_avg)) items.push(["Load", h.load_avg.map((x) => Number(x).toFixed(2)).join(" ")]);
    if (h.memory && h.memory.total_bytes) {
      items.push(["Memory", `${gib(h.memory.available_bytes)} of ${gib(h.memory.total_bytes)} GiB free`]);
    }
    if (h.in_flight && typeof h.in_flight === "object") {
      const n = Object.values(h.in_flight).reduce((a, b) => a + (Number(b) || 0), 0);
      items.push(["In flight", String(n)]);
    }
    if (Array.isArray(h.gpus)) {
      items.push(["GPUs", h.gpus.length ? h.gpus.map((g) => {
        const parts = [g.name || `GPU ${g.index}`];
        if (g.utilization_pct !== undefined) parts.push(`${g.utilization_pct}%`);
        if (g.memory_used_mib !== undefined) parts.push(`${g.memory_used_mib}/${g.memory_total_mib} MiB`);
        if (g.temperature_c !== undefined) parts.push(`${g.temperature_c} °C`);
        return parts.join(" · ");
      }).join("; ") : "none"]);
    }
    return items;
  };

  const serviceState = (p, name) => {
    const s = p.health && p.health.services && p.health.services[name];
    if (!s || typeof s !== "object" || s.up === undefined) return null;
    return s;
  };

  // The hub's verdict (up, down, or unknown once the provider is offline: its last report
  // says nothing about now), with the agent's detail as the tooltip.
  const serviceBadge = (state, st) => {
    if (!state) return el("span", {class: "muted"}, "–");
    const title = state === "unknown" ? "the provider is offline" : (st && st.detail) || "";
    const cls = state === "up" ? "ok" : state === "down" ? "off" : "unknown";
    return el("span", {class: `badge ${cls}`, title, dataset: {state}}, state);
  };

  const renderProvider = (p, openDetails, openRaw) => {
    const online = isOnline(p);
    const deleteForm = deleteTemplate.content.firstElementChild.cloneNode(true);
    deleteForm.action = `/dashboard/providers/${p.id}/delete`;
    const card = el("article", {
      class: `card provider ${online ? "online" : "offline"}`,
      dataset: {providerId: p.id, status: online ? "online" : "offline"},
    },
      el("header", {class: "provider-head"},
        el("h2", {}, p.name),
        el("span", {class: `badge status ${online ? "ok" : "off"}`}, online ? "online" : "offline"),
        p.cooling_down !== null && p.cooling_down !== undefined
          ? el("span", {class: "badge status off", dataset: {health: "cooling-down"}}, "cooling down") : "",
        p.leaving ? el("span", {class: "badge status off", dataset: {health: "leaving"}}, "shutting down") : "",
        el("span", {class: "age muted"}, `last heartbeat ${ago(age(p))}`),
        el("span", {class: "spacer"}),
        deleteForm),
      el("dl", {class: "facts compact"},
        el("dt", {}, "Transport"), el("dd", {dataset: {transport: p.transport}}, transportText(p)),
        p.transport === "tunnel" ? "" : el("dt", {}, "Callback URL"),
        p.transport === "tunnel" ? "" : el("dd", {}, el("code", {}, p.callback_url)),
        el("dt", {}, "Agent version"), el("dd", {}, p.agent_version || "–"),
        el("dt", {}, "Registered"), el("dd", {}, localTime(new Date(p.created_at * 1000)))),
    );
    if (!online) {
      card.append(el("p", {class: "offline-note"},
        `Offline: no heartbeat for ${ago(age(p)).replace(" ago", "")}. Requests to its models get a 503 until its agent is back.`));
    }
    if (online && p.cooling_down !== null && p.cooling_down !== undefined) {
      card.append(el("p", {class: "offline-note"},
        `Cooling down: the hub could not reach this agent or it answered 502/503. New requests skip it for ${Math.ceil(p.cooling_down)} s more, then one request tries it again.`));
    }
    const services = el("div", {class: "services"});
    if (!p.services_by_type.length) services.append(el("p", {class: "muted"}, "No services advertised (all down?)."));
    for (const group of p.services_by_type) {
      const rows = group.services.map((s) => {
        const st = serviceState(p, s.name);
        return el("tr", {dataset: {service: s.name}},
          el("td", {}, el("code", {}, s.name)),
          el("td", {}, s.engine),
          el("td", {}, s.features.length ? s.features.map((f) => el("span", {class: "chip feature"}, f)) : el("span", {class: "muted"}, "–")),
          el("td", {}, s.models.map((m) => el("span", {class: "chip model"}, m))),
          el("td", {}, serviceBadge(online ? s.state : (s.state && "unknown"), st)));
      });
      services.append(
        el("h3", {dataset: {type: group.type}}, TYPE_NAMES[group.type] || group.type, el("span", {class: "type-tag"}, group.type)),
        el("table", {class: "data services-table"},
          el("thead", {}, el("tr", {}, ["Service", "Engine", "Features", "Models", "Health"].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows)));
    }
    card.append(services);
    const summary = healthSummary(p.health || {});
    const details = el("details", {class: "health", dataset: {providerId: p.id}, open: openDetails.has(String(p.id))},
      el("summary", {}, "Health snapshot"),
      summary.length ? el("dl", {class: "facts compact"}, summary.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])) : null,
      el("details", {class: "raw", dataset: {providerId: p.id}, open: openRaw.has(String(p.id))},
        el("summary", {}, "Raw JSON"),
        el("pre", {class: "json"}, JSON.stringify(p.health || {}, null, 2))));
    card.append(details);
    return card;
  };

  const render = () => {
    const openIds = (selector) => new Set([...root.querySelectorAll(selector)].map((d) => d.dataset.providerId));
    const open = openIds("details.health[open]");
    const openRaw = openIds("details.raw[open]");
    root.replaceChildren(...data.providers.map((p) => renderProvider(p, open, openRaw)));
    empty.hidden = data.providers.length > 0;
    lastShape = shape();
  };

  // Everything but the ticking ages: re-render only when this changes.
  const shape = () => JSON.stringify(data.providers.map((p) => [p.id, p.name, p.callback_url,
    p.transport, p.tunnel_rtt_ms, p.agent_version, isOnline(p), p.services_by_type, p.health]));

  const tick = () => {
    if (shape() !== lastShape) { render(); return; }
    for (const p of data.providers) {
      const card = root.querySelector(`[data-provider-id="${p.id}"] .age`);
      if (card) card.textContent = `last heartbeat ${ago(age(p))}`;
    }
  };

  const poll = async () => {
    try {
      const resp = await fetch("/dashboard/api/providers", {headers: {Accept: "application/json"}});
      if (resp.status === 401) { window.location.href = "/login?next=/dashboard/providers"; return; }
      if (resp.ok) {
        data = await resp.json();
        fetchedAt = performance.now();
        document.body.classList.remove("stale");
        tick();
      }
    } catch (err) {
      document.body.classList.add("stale");  // the hub is unreachable; keep ticking
    }
    setTimeout(poll, data.poll_ms || 2000);
  };

  render();
  setInterval(tick, 1000);
  setTimeout(poll, data.poll_ms || 2000);
})();
