// Checkpoints: the list, and one checkpoint's grouped inspect view.
import { api } from "./api.js";
import { jobsTable } from "./jobs.js";
import { checkpointNames, copyId, errorBox, h, mount, pagedTable, when } from "./util.js";

const human = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(1)}G` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M`
  : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n));

export function checkpointsPage() {
  const body = h("div", {});
  mount(h("h1", {}, "Checkpoints"), body);
  api("/v1/checkpoints?limit=1000").then((list) => {
    body.replaceChildren(pagedTable({ label: "Checkpoints", columns: ["File", "Id", "Format", "Tensors", "Elements", "Uploaded"],
      rows: list.data, empty: "No checkpoints yet: upload one from the New conversion form.",
      row: (c) => h("tr", { "data-checkpoint": c.id }, h("td", {}, h("a", { href: `#/checkpoints/${c.id}`, title: c.id }, c.filename)),
        h("td", { class: "mono" }, c.id.slice(0, 8), " ", copyId(c.id)), h("td", {}, c.format), h("td", { class: "num" }, String(c.tensors)),
        h("td", { class: "num" }, human(c.elements)), h("td", {}, when(c.created_at))) }));
  }).catch((err) => body.replaceChildren(errorBox(err)));
}

export function checkpointPage(id) {
  const body = h("div", {}, h("p", { class: "muted" }, "Inspecting…"));
  const title = h("span", { class: "mono" }, id);
  const jobs = h("section", { id: "checkpoint-jobs", "aria-label": "Jobs" });
  mount(h("h1", {}, "Checkpoint ", title), body, jobs);
  Promise.all([api(`/v1/checkpoints/${id}`), api(`/v1/checkpoints/${id}/inspect?groups=true`)])
    .then(([record, doc]) => {
      title.replaceChildren(record.filename, " ", copyId(record.id));
      body.replaceChildren(render(record, doc));
    })
    .catch((err) => body.replaceChildren(errorBox(err)));
  Promise.all([api("/v1/jobs?limit=1000"), checkpointNames(true)]).then(([list, names]) => {
    const using = list.data.filter((j) => j.source === id || j.target.checkpoint === id);
    jobs.replaceChildren(h("h2", {}, `Jobs using it (${using.length})`),
      jobsTable(using, names, { label: "Jobs using this checkpoint", empty: "No job has used this checkpoint yet." }));
  }).catch((err) => jobs.replaceChildren(errorBox(err)));
}

function render(record, doc) {
  const t = doc.totals;
  const search = h("input", { type: "search", id: "tensor-search", placeholder: "key, shape or dtype" });
  const out = h("div", {});
  const update = () => {
    const q = search.value.trim().toLowerCase();
    const rows = doc.groups.filter((g) => !q || g.pattern.toLowerCase().includes(q) ||
      g.keys.some((k) => k.toLowerCase().includes(q)) || JSON.stringify(g.shape).includes(q) || g.dtype.includes(q));
    out.replaceChildren(pagedTable({ label: "Tensors", columns: ["Keys", "n", "Shape", "dtype", "Kind"], rows,
      row: (g) => h("tr", {}, h("td", { class: "key" }, g.pattern), h("td", { class: "num" }, String(g.keys.length)),
        h("td", { class: "mono" }, `[${g.shape.join(", ")}]`), h("td", {}, g.dtype), h("td", {}, g.kind)) }));
  };
  search.addEventListener("input", update);
  update();
  return h("div", { id: "inspect" },
    h("dl", { class: "kv" },
      h("dt", {}, "file"), h("dd", {}, record.filename),
      h("dt", {}, "sha256"), h("dd", { class: "mono" }, record.sha256),
      h("dt", {}, "format"), h("dd", {}, doc.format),
      h("dt", {}, "entry"), h("dd", {}, doc.entry || "(root: flat state dict)",
        doc.candidates && doc.candidates.length ? ` — candidates: ${doc.candidates.join(", ")}` : ""),
      h("dt", {}, "prefix stripped"), h("dd", {}, doc.stripped_prefix || "–"),
      h("dt", {}, "tensors"), h("dd", { "data-total": "tensors" }, String(t.tensors)),
      h("dt", {}, "elements"), h("dd", {}, `${human(t.elements)} (parameters ${t.parameters.tensors}, buffers ${t.buffers.tensors})`),
      h("dt", {}, "dtypes"), h("dd", {}, Object.entries(t.by_dtype).map(([d, v]) => `${d} ${v.tensors}`).join(", "))),
    h("h2", {}, "Tensors, grouped"),
    h("div", { class: "controls" }, h("div", {}, h("label", { for: "tensor-search" }, "Search"), search)),
    out,
    h("p", {}, h("a", { href: `#/new?source=${record.id}` }, "Convert this checkpoint…")));
}
