// Small DOM helpers: build elements without innerHTML, so no key name is ever markup.
import { api } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    // Through the CSSOM: the Content-Security-Policy refuses style attributes (style-src 'self').
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const badge = (status) => h("span", { class: `badge s-${status}` }, status);
export const pct = (x) => `${(100 * x).toFixed(2).replace(/\.00$/, "")}%`;
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

export function mount(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
  return main;
}

export function errorBox(err) {
  const p = err && err.problem ? err.problem : {};
  return h("div", { class: "alert", role: "alert" },
    h("strong", {}, p.title || "Error"), " ", err.message || String(err),
    p.type ? h("span", { class: "muted" }, ` (${p.type})`) : null);
}

// A table that shows `size` rows at a time: a 10,000-entry report stays responsive.
export function pagedTable({ columns, rows, row, size = 100, empty = "Nothing to show.", label }) {
  const wrap = h("div", {});
  let page = 0;
  const render = () => {
    const pages = Math.max(1, Math.ceil(rows.length / size));
    page = Math.min(page, pages - 1);
    const slice = rows.slice(page * size, (page + 1) * size);
    const table = h("table", { "aria-label": label },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, slice.length ? slice.map(row)
        : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))));
    const pager = pages > 1 ? h("div", { class: "pager" },
      h("button", { class: "secondary", disabled: page === 0, onclick: () => { page--; render(); } }, "Previous"),
      h("span", { "data-testid": "page" }, `page ${page + 1} of ${pages} (${rows.length} rows)`),
      h("button", { class: "secondary", disabled: page >= pages - 1, onclick: () => { page++; render(); } }, "Next"))
      : h("div", { class: "muted", "data-testid": "rowcount" }, `${rows.length} ${rows.length === 1 ? "row" : "rows"}`);
    wrap.replaceChildren(table, pager);
  };
  render();
  return wrap;
}

// Names, not hashes: a checkpoint's file name (its id in the tooltip and a copy button), an
// architecture's name and kwargs.
let namesCache = null;
export function checkpointNames(refresh = false) {
  if (!namesCache || refresh) {
    namesCache = api("/v1/checkpoints?limit=1000").then((list) => new Map(list.data.map((c) => [c.id, c.filename])))
      .catch(() => new Map());
  }
  return namesCache;
}

export function copyId(id) {
  return h("button", { type: "button", class: "copy", title: `copy id ${id}`, "aria-label": `copy id ${id}`,
    "data-copy": id, onclick: (e) => {
      e.preventDefault();
      if (navigator.clipboard) navigator.clipboard.writeText(id).catch(() => {});
      e.currentTarget.textContent = "copied";
    } }, "id");
}

export function checkpointLabel(id, names, { link = true } = {}) {
  if (!id) return "–";
  const name = names.get(id) || `${id.slice(0, 12)}…`;
  const text = h("span", { class: "name", title: id, "data-id": id }, name);
  return h("span", { class: "named" }, link ? h("a", { href: `#/checkpoints/${id}`, title: id }, text) : text, " ", copyId(id));
}

export function targetLabel(t, names) {
  if (!t) return "–";
  if (t.checkpoint) return checkpointLabel(t.checkpoint, names);
  if (t.architecture) {
    const kw = Object.entries(t.kwargs || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
    return h("span", { class: "name", "data-architecture": t.architecture }, t.architecture,
      kw ? h("span", { class: "muted" }, `(${kw})`) : null);
  }
  if (t.skeleton) return `skeleton (${t.skeleton.tensors} tensors)`;
  return "?";
}

export const seconds = (s) => (s == null ? "–" : s < 60 ? `${s.toFixed(1)} s`
  : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
