// The job list: live status and progress, filtered by status; sources and targets by name.
import { api, isTerminal } from "./api.js";
import { badge, checkpointLabel, checkpointNames, errorBox, h, mount, pct, seconds, targetLabel, when } from "./util.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

export function jobsPage(params) {
  const status = params.get("status") || "";
  const select = h("select", { id: "status-filter", onchange: (e) => {
    location.hash = e.target.value ? `#/jobs?status=${e.target.value}` : "#/jobs";
  } }, h("option", { value: "" }, "all"),
  STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const body = h("div", {});
  mount(h("h1", {}, "Jobs"),
    h("div", { class: "controls" }, h("div", {}, h("label", { for: "status-filter" }, "Status"), select),
      h("a", { href: "#/new" }, "New conversion")),
    body);
  let timer = null;
  let alive = true;
  const load = async () => {
    try {
      const q = status ? `&status=${status}` : "";
      const jobs = await api(`/v1/jobs?limit=200${q}`);
      const known = await checkpointNames();
      const unknown = jobs.data.some((j) => (j.source && !known.has(j.source)) ||
        (j.target.checkpoint && !known.has(j.target.checkpoint)));
      const names = unknown ? await checkpointNames(true) : known;
      if (!alive) return;
      body.replaceChildren(jobsTable(jobs.data, names));
      // Live: every second while a job shown can still change, else every five (new jobs).
      timer = setTimeout(load, jobs.data.some((j) => !isTerminal(j.status)) ? 1000 : 5000);
    } catch (err) { body.replaceChildren(errorBox(err)); }
  };
  load();
  return () => { alive = false; clearTimeout(timer); };
}

// Also the pipeline page's runs and the checkpoint page's jobs.
export function jobsTable(jobs, names, { label = "Jobs", empty = null } = {}) {
  if (!jobs.length) return h("p", { class: "muted" }, empty || ["No jobs yet. ", h("a", { href: "#/new" }, "Start a conversion.")]);
  const cols = ["Job", "Status", "Progress", "Source", "Target", "Duration", "Coverage", "Created", "Result"];
  return h("div", { class: "scroll" }, h("table", { "aria-label": label, id: "jobs-table" },
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, jobs.map((j) => h("tr", { "data-job": j.id },
      h("td", { class: "mono" }, h("a", { href: `#/jobs/${j.id}`, title: j.id }, j.id.slice(0, 8))),
      h("td", {}, badge(j.status), j.dry_run ? h("span", { class: "muted" }, " dry run") : null),
      h("td", {}, h("span", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": Math.round(100 * j.progress), "aria-label": `progress of ${j.id}` },
      h("span", { style: `width:${Math.round(100 * j.progress)}%` })), " ", j.stage || ""),
      h("td", { "data-col": "source" }, j.source ? checkpointLabel(j.source, names)
        : j.source_ref ? h("span", { class: "mono" }, j.source_ref.uri) : "–"),
      h("td", { "data-col": "target" }, targetLabel(j.target, names)),
      h("td", { class: "num", "data-col": "duration" }, seconds(j.duration_seconds)),
      h("td", { class: "num", "data-col": "coverage" }, j.coverage ? pct(j.coverage.tensors) : "–"),
      h("td", {}, when(j.created_at)),
      h("td", {}, j.error ? h("span", { class: "error" }, j.error.type) : j.ok ? "ok" : ""))))));
}
