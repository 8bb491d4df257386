// The job list: live status and progress, filtered by status.
import { api, isTerminal } from "./api.js";
import { badge, errorBox, h, mount, when } from "./util.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

function targetLabel(t) {
  if (t.checkpoint) return `checkpoint ${t.checkpoint.slice(0, 8)}`;
  if (t.architecture) return `architecture ${t.architecture}`;
  if (t.skeleton) return `skeleton (${t.skeleton.tensors} tensors)`;
  return "?";
}

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
      if (!alive) return;
      body.replaceChildren(render(jobs));
      // Live: every second while a job shown can still change, else every five (new jobs).
      timer = setTimeout(load, jobs.data.some((j) => !isTerminal(j.status)) ? 1000 : 5000);
    } catch (err) { body.replaceChildren(errorBox(err)); }
  };
  load();
  return () => { alive = false; clearTimeout(timer); };
}

function render(jobs) {
  if (!jobs.data.length) return h("p", { class: "muted" }, "No jobs yet. ", h("a", { href: "#/new" }, "Start a conversion."));
  return h("table", { "aria-label": "Jobs", id: "jobs-table" },
    h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "Source", "Target", "Created", "Result"]
      .map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, jobs.data.map((j) => h("tr", { "data-job": j.id },
      h("td", { class: "mono" }, h("a", { href: `#/jobs/${j.id}` }, j.id.slice(0, 12))),
      h("td", {}, badge(j.status), j.dry_run ? h("span", { class: "muted" }, " dry run") : null),
      h("td", {}, h("span", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": Math.round(100 * j.progress), "aria-label": `progress of ${j.id}` },
      h("span", { style: `width:${Math.round(100 * j.progress)}%` })), " ", j.stage || ""),
      h("td", { class: "mono" }, j.source ? h("a", { href: `#/checkpoints/${j.source}` }, j.source.slice(0, 8)) : "–"),
      h("td", {}, targetLabel(j.target)),
      h("td", {}, when(j.created_at)),
      h("td", {}, j.error ? h("span", { class: "error" }, j.error.type) : j.ok ? "ok" : "")))));
}
