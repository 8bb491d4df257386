// Pipelines: the list, a form that creates one (YAML or JSON, as the API takes it), and one
// pipeline's definition with the jobs it started (its runs).
import { api } from "./api.js";
import { jobsTable } from "./jobs.js";
import { recipeView } from "./job.js";
import { checkpointNames, errorBox, h, mount, targetLabel, when } from "./util.js";

const EXAMPLE = `name: resnet-to-mobile
trigger:
  model: resnet-src
  on: model_version_created
target:
  architecture: graft_mobilenet
  kwargs: {num_classes: 10}
recipe:
  version: 1
`;

export function pipelinesPage() {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const spec = h("textarea", { id: "pipeline-spec", rows: 12, spellcheck: "false" }, EXAMPLE);
  const message = h("div", { role: "status", id: "pipeline-message" });
  const load = () => Promise.all([api("/v1/pipelines?limit=1000"), checkpointNames(true)])
    .then(([list, names]) => body.replaceChildren(table(list.data, names)))
    .catch((err) => body.replaceChildren(errorBox(err)));
  const create = async (e) => {
    e.preventDefault();
    message.replaceChildren();
    try {
      // The server parses the text (PyYAML safe_load, as for recipes); this only sends it.
      const parsed = await api("/v1/recipes/parse", { method: "POST", json: { recipe_text: spec.value } });
      const made = await api("/v1/pipelines", { method: "POST", json: parsed.recipe || {} });
      message.replaceChildren(h("p", {}, "Created ", h("a", { href: `#/pipelines/${made.name}` }, made.name), "."));
      await load();
    } catch (err) { message.replaceChildren(errorBox(err)); }
  };
  mount(h("h1", {}, "Pipelines"),
    h("p", { class: "muted" }, "Each MLflow registry event a pipeline watches starts one conversion job."),
    body,
    h("form", { id: "pipeline-form", onsubmit: create },
      h("fieldset", {}, h("legend", {}, "New pipeline (YAML or JSON)"),
        h("label", { for: "pipeline-spec" }, "Definition"), spec,
        h("p", {}, h("button", { type: "submit", id: "pipeline-create" }, "Create pipeline")), message)));
  load();
}

function table(list, names) {
  if (!list.length) return h("p", { class: "muted", id: "no-pipelines" }, "No pipelines yet.");
  return h("div", { class: "scroll" }, h("table", { id: "pipelines-table", "aria-label": "Pipelines" },
    h("thead", {}, h("tr", {}, ["Name", "Trigger", "Target", "Updated"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, list.map((p) => h("tr", { "data-pipeline": p.name },
      h("td", {}, h("a", { href: `#/pipelines/${p.name}`, title: p.id }, p.name)),
      h("td", {}, `${p.trigger.registry} ${p.trigger.model}, on ${p.trigger.on}`),
      h("td", {}, targetLabel(p.target, names)), h("td", {}, when(p.updated_at)))))));
}

export function pipelinePage(name) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  mount(h("h1", {}, "Pipeline ", h("span", { class: "mono" }, name)), body);
  Promise.all([api(`/v1/pipelines/${encodeURIComponent(name)}`), api("/v1/jobs?limit=1000"), checkpointNames(true)])
    .then(([p, jobs, names]) => {
      const runs = jobs.data.filter((j) => j.pipeline === p.id || j.pipeline === p.name);
      const remove = h("button", { type: "button", class: "secondary", id: "pipeline-delete", onclick: async () => {
        if (!window.confirm(`Delete pipeline ${p.name}?`)) return;
        try { await api(`/v1/pipelines/${encodeURIComponent(p.name)}`, { method: "DELETE" }); location.hash = "#/pipelines"; }
        catch (err) { body.prepend(errorBox(err)); }
      } }, "Delete");
      body.replaceChildren(
        h("dl", { class: "kv", id: "pipeline" },
          h("dt", {}, "trigger"), h("dd", {}, `${p.trigger.registry} model ${p.trigger.model}, on ${p.trigger.on}`),
          h("dt", {}, "target"), h("dd", {}, targetLabel(p.target, names)),
          h("dt", {}, "output"), h("dd", {}, p.output.format, p.output.register ? `, registered as ${p.output.register.name}` : ""),
          h("dt", {}, "created"), h("dd", {}, when(p.created_at))),
        recipeView(p.recipe),
        h("h2", {}, `Runs (${runs.length})`),
        h("div", { id: "pipeline-runs" }, jobsTable(runs, names, { label: "Runs",
          empty: "No runs yet: the pipeline starts a job on its next registry event." })),
        h("p", {}, remove));
    }).catch((err) => body.replaceChildren(errorBox(err)));
}
