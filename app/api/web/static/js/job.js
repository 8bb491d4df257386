// One job: status, live progress, and its report drawn to be read at a glance.
import { api, download, followJob, isTerminal } from "./api.js";
import { attestationView } from "./attestation.js";
import { badge, checkpointLabel, checkpointNames, errorBox, h, mount, pagedTable, pct, seconds, targetLabel,
  when } from "./util.js";

const TARGET = ["loaded", "adapted", "tied", "initialized", "kept", "missing"];
const SOURCE = ["used", "dropped", "unexpected", "mismatched"];

export function jobPage(id) {
  const head = h("section", { id: "job-head" });
  const report = h("section", { id: "report" });
  mount(h("h1", {}, "Job ", h("span", { class: "mono" }, id)), head, report);
  let shown = false;
  const names = checkpointNames(true);
  const stop = followJob(id, async (job) => {
    if (job._error) { head.replaceChildren(errorBox(job._error)); return; }
    if (job._progress) { updateProgress(head, job._progress); return; }
    head.replaceChildren(renderHead(job, await names));
    if (isTerminal(job.status) && !shown) {
      shown = true;
      report.replaceChildren(h("p", { class: "muted" }, "Loading the report…"));
      try { report.replaceChildren(h("div", {}, await renderReport(job))); }
      catch (err) { report.replaceChildren(errorBox(err)); }
    }
  });
  return stop;
}

function updateProgress(head, p) {
  const bar = head.querySelector(".progress > span");
  if (bar) bar.style.width = `${Math.round(100 * p.progress)}%`;
}

function renderHead(job, names) {
  const pctDone = Math.round(100 * job.progress);
  return h("div", {},
    h("p", {}, h("span", { id: "job-status" }, badge(job.status)), " ",
      h("span", { class: "progress", role: "progressbar", "aria-label": "progress",
        "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pctDone },
      h("span", { style: `width:${pctDone}%` })), ` ${pctDone}% `, job.stage || ""),
    job.error ? h("div", { class: "alert", role: "alert" }, h("strong", {}, job.error.type), ": ", job.error.message || "") : null,
    h("dl", { class: "kv" },
      h("dt", {}, "source"), h("dd", { id: "job-source" }, job.source ? checkpointLabel(job.source, names)
        : job.source_ref ? h("span", { class: "mono" }, job.source_ref.uri) : "–"),
      h("dt", {}, "target"), h("dd", { id: "job-target" }, job.target.architecture ? "architecture " : job.target.checkpoint
        ? "checkpoint " : "", targetLabel(job.target, names)),
      h("dt", {}, "output"), h("dd", {}, `${job.output.format}${job.output.dtype ? ", " + job.output.dtype : ""}${job.dry_run ? " (dry run)" : ""}`),
      h("dt", {}, "created"), h("dd", {}, when(job.created_at)),
      h("dt", {}, "ran"), h("dd", { id: "job-duration" }, seconds(job.duration_seconds)),
      h("dt", {}, "attempts"), h("dd", {}, String(job.attempts)),
      job.pipeline ? [h("dt", {}, "pipeline"), h("dd", {}, h("a", { href: `#/pipelines/${job.pipeline}` }, job.pipeline))] : null,
      job.callback ? [h("dt", {}, "webhooks"), h("dd", {}, h("a", { id: "deliveries-link", href: `#/jobs/${job.id}/deliveries` },
        "deliveries and retries"))] : null),
    recipeView(job.recipe));
}

async function renderReport(job) {
  const artifacts = await api(`/v1/jobs/${job.id}/artifacts`);
  const names = new Set(artifacts.data.map((a) => a.name));
  if (!names.has("report")) return [h("p", { class: "muted" }, "This job produced no report.")];
  const [report, groups] = await Promise.all([
    api(`/v1/jobs/${job.id}/report`), api(`/v1/jobs/${job.id}/report?format=groups`)]);
  const manifest = names.has("manifest") ? await api(`/v1/jobs/${job.id}/manifest`) : null;
  return [
    summary(report),
    downloads(job, names),
    h("h2", {}, "Target keys"), entries(groups.entries),
    h("h2", {}, `Unused source keys (${report.unused.length})`), unused(groups.unused),
    hints(report),
    report.rules ? [h("h2", {}, "Rules"), rules(report.rules)] : null,
    h("h2", {}, `Warnings (${report.warnings.length})`),
    report.warnings.length ? h("ul", { id: "warnings" }, report.warnings.map((w) => h("li", {}, w)))
      : h("p", { class: "muted" }, "None."),
    h("h2", {}, "Verification"), verification(report.verification),
    h("h2", {}, "Attestation"), await attestationView(job, artifacts.data),
    h("h2", {}, "Manifest"), manifest ? manifestView(manifest, groups.entries) : h("p", { class: "muted" }, "None."),
  ];
}

function summary(report) {
  const s = report.summary;
  const total = TARGET.reduce((n, k) => n + (s[k] || 0), 0) || 1;
  const card = (k, side) => h("div", { class: "card", "data-count": k },
    h("div", { class: "n" }, String(s[k] || 0)), h("div", { class: "l" }, `${side} ${k}`));
  const bar = h("div", { class: "bar", role: "img",
    "aria-label": TARGET.map((k) => `${k} ${s[k] || 0}`).join(", ") },
  TARGET.filter((k) => s[k]).map((k) => h("span", { title: `${k} ${s[k]}`,
    style: `width:${(100 * s[k]) / total}%;background:var(--${k})` })));
  const cov = (label, x) => [h("span", {}, label),
    h("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuenow": Math.round(100 * x),
      "aria-valuemin": 0, "aria-valuemax": 100 }, h("span", { style: `width:${100 * x}%;background:var(--ok)` })),
    h("strong", { "data-coverage": label }, pct(x))];
  return h("section", { id: "summary", "aria-label": "Summary" },
    h("p", {}, report.ok ? badge("succeeded") : badge("failed"), " ",
      `${report.source.format}, ${report.source.tensors} source tensors → ${report.target.kind}, ${report.target.tensors} target tensors`),
    h("div", { class: "cards" }, TARGET.filter((k) => k in s).map((k) => card(k, "target"))),
    bar,
    h("div", { class: "legend" }, TARGET.filter((k) => s[k]).map((k) => h("span", {}, h("i", { style: `background:var(--${k})` }), k))),
    h("div", { class: "cards" }, SOURCE.map((k) => card(k, "source"))),
    h("div", { class: "coverage" }, cov("tensors covered", s.coverage.tensors), cov("elements covered", s.coverage.elements)));
}

function downloads(job, names) {
  const button = (artifact, label) => names.has(artifact)
    ? h("button", { class: "secondary", "data-download": artifact,
      onclick: () => download(job.id, artifact) }, label) : null;
  return h("p", { id: "downloads", class: "row" }, button("weights", "Download weights"),
    button("report", "Download report (JSON)"), button("manifest", "Download manifest"));
}

export function entries(groups) {
  const status = h("select", { id: "entry-status" }, h("option", { value: "" }, "all statuses"),
    TARGET.map((s) => h("option", { value: s }, s)));
  const search = h("input", { type: "search", id: "entry-search", placeholder: "key, source, rule or op" });
  const out = h("div", {});
  const update = () => {
    const q = search.value.trim().toLowerCase();
    const rows = groups.filter((g) => (!status.value || g.status === status.value) && (!q ||
      g.pattern.toLowerCase().includes(q) || g.keys.some((k) => k.toLowerCase().includes(q)) ||
      g.sources.some((k) => k.toLowerCase().includes(q)) || g.how.some((k) => k.toLowerCase().includes(q))));
    out.replaceChildren(pagedTable({ label: "Target keys", columns: ["Status", "Keys", "n", "From", "Rules and ops"],
      rows, row: (g) => h("tr", { "data-status": g.status },
        h("td", {}, badge(g.status)), h("td", { class: "key" }, g.pattern), h("td", { class: "num" }, String(g.keys.length)),
        fromCell(g), h("td", { class: "mono" }, g.how.join(", "))) }));
  };
  status.addEventListener("change", update);
  search.addEventListener("input", update);
  update();
  return h("div", { id: "entries" }, h("div", { class: "controls" },
    h("div", {}, h("label", { for: "entry-status" }, "Status"), status),
    h("div", {}, h("label", { for: "entry-search" }, "Search"), search)), out);
}

// The grouped report leaves `sources` empty where every key came from the source key of the
// same name: say so, rather than show nothing.
const FED = new Set(["loaded", "adapted"]);
function fromCell(g) {
  if (g.sources.length) return h("td", { class: "key", "data-col": "from" }, g.sources.join(", "));
  if (FED.has(g.status)) return h("td", { class: "key", "data-col": "from", title: "the source key of the same name" }, g.pattern);
  return h("td", { class: "muted", "data-col": "from" }, "–");
}

// The recipe as the job was given it.
export function recipeView(recipe) {
  return h("section", { id: "recipe-used", "aria-label": "Recipe" }, h("h2", {}, "Recipe"),
    recipe ? h("pre", { class: "recipe" }, JSON.stringify(recipe, null, 2))
      : h("p", { class: "muted" }, "No recipe: the defaults applied."));
}

function unused(groups) {
  return h("div", { id: "unused" }, pagedTable({ label: "Unused source keys", columns: ["Reason", "Keys", "n", "Rule"],
    rows: groups, empty: "Every source key was used.", row: (u) => h("tr", {},
      h("td", {}, badge(u.reason)), h("td", { class: "key" }, u.pattern), h("td", { class: "num" }, String(u.keys.length)),
      h("td", { class: "mono" }, u.rule || "–")) }));
}

// Each leftover key's best candidate and the recipe line to paste (one row per pair).
function hints(report) {
  const seen = new Set();
  const rows = [...report.entries.map((e) => [e.target, "←", e.hint]),
    ...report.unused.map((u) => [u.source, "→", u.hint])]
    .filter(([, , x]) => x && !seen.has(x.paste) && seen.add(x.paste));
  if (!rows.length) return null;
  return [h("h2", {}, `Hints (${rows.length})`), h("ul", { id: "hints" }, rows.map(([key, arrow, x]) =>
    h("li", {}, h("span", { class: "key" }, key), ` ${arrow} `, h("span", { class: "key" }, x.candidate),
      ` (${x.confidence.toFixed(2)}) `, h("code", {}, x.paste))))];
}

function rules(list) {
  const rows = Array.isArray(list) ? list : Object.entries(list).map(([rule, v]) => ({ rule, ...v }));
  return h("table", { id: "rules", "aria-label": "Rules" },
    h("thead", {}, h("tr", {}, ["Rule", "Matched", "Applied", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => {
      // `applied`: the keys the rule changed (reports before it had only `matched`).
      const idle = r.matched > 0 && r.applied === 0;
      return h("tr", { class: r.matched === 0 ? "unmatched" : idle ? "unapplied" : "" },
        h("td", { class: "mono" }, r.rule || r.name || "?"), h("td", { class: "num" }, String(r.matched)),
        h("td", { class: "num" }, r.applied === undefined ? "–" : String(r.applied)),
        h("td", {}, r.matched === 0 ? h("strong", { class: "error" }, "unmatched: this rule selected no key")
          : idle ? h("span", { class: "muted" }, "changed no key") : ""));
    })));
}

function verification(v) {
  if (!v) return h("p", { class: "muted" }, "Not run (a dry run).");
  if (v === "skipped" || v.skipped) return h("p", {}, "Skipped (--no-verify).");
  const strict = { true: "strict load ok", false: "STRICT LOAD FAILED", null: "strict load not run" };
  return h("p", { id: "verification" }, `${v.equal}/${v.checked} tensors equal to the source after their ops; ${strict[v.strict_load]}`,
    v.forward ? h("span", {}, `; forward pass ${v.forward.ok ? "ok" : v.forward.ok === null ? "skipped" : "FAILED"}`) : null);
}

// Frozen keys grouped as the key table groups them: a group all frozen is one line.
export function groupKeys(keys, groups) {
  const left = new Set(keys);
  const out = [];
  for (const g of groups) {
    const inside = g.keys.filter((k) => left.has(k));
    if (!inside.length) continue;
    if (inside.length === g.keys.length) out.push({ pattern: g.pattern, n: inside.length });
    else inside.forEach((k) => out.push({ pattern: k, n: 1 }));
    inside.forEach((k) => left.delete(k));
  }
  left.forEach((k) => out.push({ pattern: k, n: 1 }));
  return out;
}

function manifestView(m, groups) {
  const frozen = groupKeys(m.frozen, groups);
  return h("dl", { class: "kv", id: "manifest" },
    h("dt", {}, `frozen keys (${m.frozen.length})`), h("dd", {}, frozen.length
      ? h("ul", { id: "frozen", class: "plain" }, frozen.map((f) => h("li", { class: "key" }, f.pattern,
        f.n > 1 ? h("span", { class: "muted" }, ` (${f.n})`) : null))) : "none"),
    h("dt", {}, "BatchNorm in eval"), h("dd", {}, m.bn_eval.length ? h("span", { class: "mono" }, m.bn_eval.join(", ")) : "none"));
}
