// Shared by every dashboard page: XSRF token, DOM and time helpers, confirm-before-submit
// forms, copy buttons. No framework, no build step.
"use strict";

window.inferclub = (() => {
  const xsrf = () => {
    const meta = document.querySelector('meta[name="xsrf-token"]');
    return meta ? meta.content : "";
  };

  /** el("div", {class: "x", dataset: {id: 1}}, "text", child) -- children are text or nodes. */
  const el = (tag, attrs, ...children) => {
    const node = tag === "svg" || (attrs && attrs.svg)
      ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "svg" || value === null || value === undefined || value === false) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  };

  const ago = (seconds) => {
    seconds = Math.max(0, seconds);
    if (seconds < 60) return `${Math.floor(seconds)} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  };

  const duration = (seconds) => {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${seconds.toFixed(0)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
    return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
  };

  const localTime = (date) => date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  /** Show <time datetime> in the browser's time zone; data-ago ones as "5 min ago". */
  const localizeTimes = (root) => {
    for (const t of (root || document).querySelectorAll("time[datetime]")) {
      const date = new Date(t.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) continue;
      t.title = t.title || t.textContent;
      t.textContent = t.hasAttribute("data-ago")
        ? ago((Date.now() - date.getTime()) / 1000) : localTime(date);
    }
  };

  const copyText = async (text) => {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (err) {
      // Older browsers, or a page not in a secure context: select and copy.
      const area = el("textarea", {readonly: true}, text);
      document.body.append(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      return ok;
    }
  };

  /** The OpenAI-shaped error message of a failed response, or its text. */
  const errorMessage = async (resp) => {
    const text = await resp.text();
    try {
      const data = JSON.parse(text);
      if (data && data.error) return data.error.message || JSON.stringify(data.error);
    } catch (err) { /* not JSON */ }
    return text.trim().slice(0, 300) || `HTTP ${resp.status}`;
  };

  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = document.querySelector(button.dataset.copy);
    if (!source) return;
    const ok = await copyText(source.textContent.trim());
    const label = button.textContent;
    button.textContent = ok ? "Copied ✓" : "Copy failed";
    button.classList.toggle("copied", ok);
    setTimeout(() => { button.textContent = label; button.classList.remove("copied"); }, 2000);
  });

  document.addEventListener("DOMContentLoaded", () => localizeTimes(document));

  return {xsrf, el, ago, duration, localTime, localizeTimes, copyText, errorMessage};
})();
