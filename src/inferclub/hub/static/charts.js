// Request history charts: small hand-written SVG (bars and lines), from the bucketed series
// the page embeds. Hover a bucket for its numbers.
"use strict";

(() => {
  const {el} = window.inferclub;
  const source = document.getElementById("chart-data");
  if (!source) return;
  const chart = JSON.parse(source.textContent);
  const series = chart.series;
  const W = 380, H = 200, L = 44, R = 8, T = 10, B = 24;
  const s = (tag, attrs, ...children) => el(tag, {...attrs, svg: true}, ...children);

  const niceMax = (v) => {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  };

  const fmtNumber = (v, unit) => {
    if (unit === "ms") {
      if (v >= 10000) return `${(v / 1000).toFixed(0)} s`;
      if (v >= 1000) return `${(v / 1000).toFixed(1)} s`;
      return `${v >= 10 || Number.isInteger(v) ? Math.round(v) : v.toFixed(1)} ms`;
    }
    if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (v >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
    if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  };

  const fmtTime = (t) => {
    const d = new Date(t * 1000);
    const span = chart.until - chart.since;
    const hm = d.toLocaleTimeString(undefined, {hour: "2-digit", minute: "2-digit"});
    const md = d.toLocaleDateString(undefined, {month: "short", day: "numeric"});
    if (chart.bucket >= 86400) return md;
    return span > 86400 ? `${md} ${hm}` : hm;
  };

  /** bars: [{name, cls, value(row)}] stacked; lines: [{name, cls, key}] (null = no data). */
  const draw = (figure, {bars = [], lines = [], unit = "", label}) => {
    const n = series.length || 1;
    const bw = (W - L - R) / n;
    const stackTop = (row) => bars.reduce((sum, b) => sum + b.value(row), 0);
    const values = series.flatMap((row) => [stackTop(row), ...lines.map((l) => row[l.key] || 0)]);
    const total = series.reduce((sum, row) => sum + stackTop(row), 0)
      + series.reduce((sum, row) => sum + lines.filter((l) => row[l.key] !== null).length, 0);
    const ymax = niceMax(Math.max(0, ...values));
    const y = (v) => T + (H - T - B) * (1 - v / ymax);
    const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": label});

    for (const v of [0, ymax / 2, ymax]) {
      svg.append(s("line", {class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v)}),
        s("text", {class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end"}, fmtNumber(v, unit)));
    }
    const ticks = Math.min(4, n);
    for (let k = 0; k < ticks; k++) {
      const i = Math.round((k * (n - 1)) / Math.max(1, ticks - 1));
      if (!series[i]) continue;
      const anchor = ticks > 1 && k === 0 ? "start" : ticks > 1 && k === ticks - 1 ? "end" : "middle";
      const x = anchor === "start" ? L + i * bw : anchor === "end" ? L + (i + 1) * bw : L + (i + 0.5) * bw;
      svg.append(s("text", {class: "axis", x, y: H - 6, "text-anchor": anchor}, fmtTime(series[i].t)));
    }

    series.forEach((row, i) => {
      let base = 0;
      for (const b of bars) {
        const v = b.value(row);
        if (v > 0) {
          svg.append(s("rect", {class: `bar ${b.cls}`, x: L + i * bw + bw * 0.12, width: Math.max(1, bw * 0.76),
            y: y(base + v), height: Math.max(0.5, y(base) - y(base + v)), dataset: {t: row.t, value: v}}));
        }
        base += v;
      }
    });

    for (const line of lines) {
      let d = "";
      let pen = false;
      const dots = [];
      series.forEach((row, i) => {
        const v = row[line.key];
        if (v === null || v === undefined) { pen = false; return; }
        const x = L + (i + 0.5) * bw;
        d += `${pen ? "L" : "M"}${x.toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
        dots.push(s("circle", {class: `dot ${line.cls}`, cx: x, cy: y(v), r: 2.5}));
      });
      if (d) svg.append(s("path", {class: `line ${line.cls}`, d}), ...dots);
    }

    // One invisible column per bucket carries the tooltip.
    series.forEach((row, i) => {
      const parts = [fmtTime(row.t)];
      for (const b of bars) parts.push(`${b.name}: ${fmtNumber(b.value(row), unit)}`);
      for (const l of lines) parts.push(`${l.name}: ${row[l.key] === null ? "–" : fmtNumber(row[l.key], unit)}`);
      svg.append(s("rect", {class: "hover", x: L + i * bw, y: T, width: bw, height: H - T - B},
        s("title", {}, parts.join("\n"))));
    });

    if (!total) {
      svg.append(s("text", {class: "no-data", x: (L + W - R) / 2, y: H / 2, "text-anchor": "middle"}, "no requests in this window"));
    }
    figure.dataset.total = String(total);
    figure.append(svg);
  };

  draw(document.getElementById("chart-requests"), {
    label: "Requests over time",
    bars: [{name: "ok", cls: "ok", value: (r) => r.requests - r.errors},
           {name: "errors", cls: "err", value: (r) => r.errors}],
  });
  draw(document.getElementById("chart-latency"), {
    label: "Average latency over time", unit: "ms",
    lines: [{name: "duration", cls: "dur", key: "duration_ms"},
            {name: "time to first byte", cls: "ttfb", key: "ttfb_ms"}],
  });
  draw(document.getElementById("chart-tokens"), {
    label: "Tokens over time",
    bars: [{name: "prompt", cls: "prompt", value: (r) => r.prompt_tokens},
           {name: "completion", cls: "completion", value: (r) => r.completion_tokens}],
  });
})();
