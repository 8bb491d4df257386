// A new conversion: source, target, recipe (validated at the rule it names), dry-run plan,
// then the job.
import { api } from "./api.js";
import { entries } from "./job.js";
import { uploadResumable } from "./resumable.js";
import { badge, errorBox, h, mount, pagedTable, pct } from "./util.js";

const LISTS = ["rename", "drop", "only", "split", "merge", "copy", "transform", "adapt", "init", "freeze"];
const EXAMPLE = "version: 1\ndrop: []\nmissing: auto\n";
const KEPT = "graft.form.recipe";  // what the user typed, kept for this tab

export function formPage(params) {
  const sourceSelect = h("select", { id: "source", required: true });
  const upload = h("input", { type: "file", id: "source-upload" });
  const targetCheckpoint = h("select", { id: "target-checkpoint" });
  const skeleton = h("textarea", { id: "target-skeleton", rows: 6, placeholder: '{"schema": "graft.skeleton/v1", "tensors": {…}}' });
  const arch = h("select", { id: "target-architecture" });
  const kwargs = h("textarea", { id: "target-kwargs", rows: 2, "aria-describedby": "kwargs-help" }, "{}");
  const kwargsHelp = h("div", { id: "kwargs-help", class: "muted" });
  const recipe = h("textarea", { id: "recipe", rows: 12, spellcheck: "false", "aria-describedby": "recipe-status" },
    sessionStorage.getItem(KEPT) ?? EXAMPLE);
  const suggestButton = h("button", { type: "button", id: "suggest-button", class: "secondary" }, "Suggest a recipe");
  const recipeStatus = h("p", { id: "recipe-status", role: "status" });
  const outline = h("ol", { class: "rule-list", id: "rule-outline", "aria-label": "Recipe rules" });
  const format = h("select", { id: "output-format" }, h("option", {}, "safetensors"), h("option", {}, "torch"));
  const planOut = h("section", { id: "plan", "aria-live": "polite" });
  const message = h("div", { role: "status" });
  const kind = (value, label, checked) => h("label", { style: "display:inline;margin-right:16px;font-weight:400" },
    h("input", { type: "radio", name: "target-kind", value, checked, onchange: showKind }), ` ${label}`);
  const panes = {
    checkpoint: h("div", {}, h("label", { for: "target-checkpoint" }, "Template checkpoint"), targetCheckpoint),
    skeleton: h("div", { hidden: true }, h("label", { for: "target-skeleton" }, "Skeleton (graft.skeleton/v1 JSON)"), skeleton),
    architecture: h("div", { hidden: true }, h("div", { class: "row" },
      h("div", {}, h("label", { for: "target-architecture" }, "Architecture"), arch),
      h("div", { style: "flex:1" }, h("label", { for: "target-kwargs" }, "kwargs (JSON)"), kwargs, kwargsHelp))),
  };
  function showKind() {
    const k = document.querySelector("input[name=target-kind]:checked").value;
    for (const [name, pane] of Object.entries(panes)) pane.hidden = name !== k;
  }
  const planButton = h("button", { type: "button", id: "plan-button", class: "secondary" }, "Dry run (plan)");
  const submitButton = h("button", { type: "submit", id: "submit-button" }, "Start conversion");
  const form = h("form", { id: "new-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "1. Source"), h("div", { class: "row" },
      h("div", {}, h("label", { for: "source" }, "Uploaded checkpoint"), sourceSelect),
      h("div", {}, h("label", { for: "source-upload" }, "…or upload one"), upload))),
    h("fieldset", {}, h("legend", {}, "2. Target"),
      h("div", { role: "radiogroup", "aria-label": "Target kind" }, kind("checkpoint", "checkpoint (template)", true),
        kind("skeleton", "skeleton"), kind("architecture", "architecture")),
      panes.checkpoint, panes.skeleton, panes.architecture),
    h("fieldset", {}, h("legend", {}, "3. Recipe (YAML or JSON, version 1)"), h("label", { for: "recipe" }, "Recipe"), recipe,
      h("p", { class: "row" }, suggestButton), recipeStatus, outline),
    h("fieldset", {}, h("legend", {}, "4. Output"), h("label", { for: "output-format" }, "Format"), format),
    h("p", { class: "row" }, planButton, submitButton), message, planOut);
  mount(h("h1", {}, "New conversion"), form);

  const fillCheckpoints = async (selectId) => {
    const list = await api("/v1/checkpoints?limit=1000");
    const opts = (sel) => list.data.map((c) => h("option", { value: c.id, selected: c.id === sel },
      `${c.filename} — ${c.tensors} tensors (${c.id.slice(0, 8)})`));
    sourceSelect.replaceChildren(h("option", { value: "" }, "choose…"), ...opts(selectId || params.get("source")));
    targetCheckpoint.replaceChildren(h("option", { value: "" }, "choose…"), ...opts(null));
  };
  fillCheckpoints().catch((err) => message.replaceChildren(errorBox(err)));
  let architectures = [];
  const showKwargs = () => kwargsHelp.replaceChildren(kwargsHints(architectures.find((a) => a.name === arch.value)));
  arch.addEventListener("change", showKwargs);
  api("/v1/architectures").then((list) => {
    architectures = list.data;
    arch.replaceChildren(...list.data.map((a) => h("option", { value: a.name }, a.name)));
    showKwargs();
  }).catch((err) => kwargsHelp.replaceChildren(errorBox(err)));

  upload.addEventListener("change", async () => {
    const file = upload.files[0];
    if (!file) return;
    message.replaceChildren(h("p", { class: "muted" }, `Uploading ${file.name}…`));
    try {
      // Resumable (tus): choosing the same file again after a reload resumes it.
      const record = await uploadResumable(file, (sent, total, resumedAt) => {
        const from = resumedAt ? ` (resumed at ${pct(resumedAt / total)})` : "";
        message.replaceChildren(h("p", { class: "muted", id: "upload-progress" },
          `Uploading ${file.name}… ${pct(sent / total)}${from}`));
      });
      await fillCheckpoints(record.id);
      const resumed = record.resumedAt ? ` Resumed at ${record.resumedAt} bytes.` : "";
      message.replaceChildren(h("p", {}, `Uploaded ${record.filename}: ${record.tensors} tensors.${resumed}`));
    } catch (err) { message.replaceChildren(errorBox(err)); }
  });

  // The recipe: YAML or JSON, parsed and validated by the server (one parser, PyYAML's
  // safe_load); an error is shown at the rule it names. The text is never rewritten.
  let timer = null;
  const validate = async () => {
    let value;
    try {
      value = recipe.value.trim() ? (await api("/v1/recipes/parse", { method: "POST",
        json: { recipe_text: recipe.value } })).recipe : null;
    } catch (err) {
      recipeStatus.replaceChildren(h("span", { class: "error", id: "recipe-error" }, err.message));
      drawOutline(outline, null, null);
      return false;
    }
    drawOutline(outline, value, null);
    if (value === null) { recipeStatus.replaceChildren("No recipe: the defaults apply."); return true; }
    try {
      await api("/v1/recipes/validate", { method: "POST", json: value });
      recipeStatus.replaceChildren(h("span", { style: "color:var(--ok)" }, "✓ valid recipe"));
      return true;
    } catch (err) {
      const rule = err.problem && err.problem.rule;
      // The message already starts with the rule's name (``adapt[0]: unknown op``).
      recipeStatus.replaceChildren(h("span", { class: "error", id: "recipe-error" }, err.message));
      drawOutline(outline, value, rule, err.message);
      return false;
    }
  };
  recipe.addEventListener("input", () => {
    sessionStorage.setItem(KEPT, recipe.value);
    clearTimeout(timer);
    timer = setTimeout(validate, 400);
  });
  validate();

  const body = () => {
    const k = document.querySelector("input[name=target-kind]:checked").value;
    let target;
    if (k === "checkpoint") target = { checkpoint: targetCheckpoint.value };
    else if (k === "skeleton") target = { skeleton: JSON.parse(skeleton.value || "{}") };
    else target = { architecture: arch.value, kwargs: JSON.parse(kwargs.value || "{}") };
    const text = recipe.value.trim() ? recipe.value : null;
    return { source: sourceSelect.value, target, ...(text === null ? {} : { recipe_text: text }) };
  };
  const check = () => {
    if (!sourceSelect.value) throw new Error("choose a source checkpoint, or upload one");
    const b = body();
    if (b.target.checkpoint === "") throw new Error("choose the target checkpoint");
    return b;
  };
  planButton.addEventListener("click", async () => {
    message.replaceChildren();
    try {
      const b = check();
      if (!(await validate())) return;
      planOut.replaceChildren(h("p", { class: "muted" }, "Planning…"));
      const report = await api("/v1/plans?groups=true", { method: "POST", json: b });
      planOut.replaceChildren(h("div", {}, planView(report)));
    } catch (err) { planOut.replaceChildren(errorBox(err)); }
  });
  // Alignment: the server proposes a recipe for this source and target (POST /v1/align).
  suggestButton.addEventListener("click", async () => {
    message.replaceChildren();
    try {
      const b = check();
      const asked = { source: b.source, target: b.target };
      if (b.recipe_text) {
        const parsed = await api("/v1/recipes/parse", { method: "POST", json: { recipe_text: b.recipe_text } });
        if (parsed.recipe) asked.recipe = parsed.recipe;
      }
      recipeStatus.replaceChildren(h("span", { class: "muted" }, "Aligning…"));
      const answer = await api("/v1/align", { method: "POST", json: asked });
      recipe.value = `${JSON.stringify(answer.recipe, null, 2)}\n`;
      sessionStorage.setItem(KEPT, recipe.value);
      const unresolved = answer.unresolved || [];
      message.replaceChildren(h("p", { id: "suggest-result" }, `Suggested: ${(answer.matches || []).length} matches, `,
        `${unresolved.length} unresolved`, unresolved.length ? h("span", { class: "muted" },
          ` (${unresolved.slice(0, 5).map((u) => (typeof u === "string" ? u : u.target || u.key || JSON.stringify(u))).join(", ")}${unresolved.length > 5 ? ", …" : ""})`) : null));
      await validate();
    } catch (err) { message.replaceChildren(errorBox(err)); recipeStatus.replaceChildren(); }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    message.replaceChildren();
    try {
      const b = check();
      if (!(await validate())) return;
      const job = await api("/v1/jobs", { method: "POST", json: { ...b, output: { format: format.value } } });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) { message.replaceChildren(errorBox(err)); }
  });
}

function drawOutline(outline, value, badRule, text) {
  const items = [];
  if (value && typeof value === "object") {
    for (const section of LISTS) {
      const list = value[section];
      if (!Array.isArray(list)) continue;
      list.forEach((rule, i) => {
        const name = `${section}[${i}]`;
        const bad = badRule === name;
        items.push(h("li", { class: bad ? "bad" : "", "data-rule": name },
          h("code", {}, name), " ", h("span", { class: "mono" }, JSON.stringify(rule)),
          bad ? h("div", { class: "error" }, text) : null));
      });
    }
  }
  outline.replaceChildren(...items);
}

export function kwargsHints(a) {
  if (!a) return "";
  const entries_ = Object.entries(a.kwargs || {});
  if (!entries_.length) return h("span", {}, `${a.name} takes no kwargs.`);
  return h("span", {}, "Valid keys: ", entries_.map(([k, v], i) => [i ? ", " : "", h("code", { "data-kwarg": k }, k),
    v.required ? " (required" : ` (default ${JSON.stringify(v.default)}`, v.type ? `, ${v.type})` : ")"]),
  a.description ? h("div", {}, a.description) : null);
}

function planView(report) {
  const s = report.summary;
  const counts = ["loaded", "adapted", "tied", "initialized", "kept", "missing", "used", "dropped", "unexpected", "mismatched"]
    .filter((k) => k in s);
  const status = h("select", { id: "plan-status" }, h("option", { value: "" }, "all statuses"),
    ["loaded", "adapted", "tied", "initialized", "kept", "missing"].map((k) => h("option", { value: k }, k)));
  const table = h("div", {});
  const update = () => table.replaceChildren(pagedTable({ label: "Planned entries",
    columns: ["Target key", "Status", "Sources", "Rules", "Ops", "Shape"],
    rows: report.entries.filter((e) => !status.value || e.status === status.value),
    row: (e) => h("tr", { "data-status": e.status }, h("td", { class: "key" }, e.target), h("td", {}, badge(e.status)),
      h("td", { class: "key" }, e.sources.join(", ")), h("td", { class: "mono" }, e.rules.join(", ")),
      h("td", { class: "mono" }, e.ops.join(", ")), h("td", { class: "mono" }, `[${e.shape.join(", ")}]`)) }));
  status.addEventListener("change", update);
  update();
  return [h("h2", {}, "Dry-run plan ", report.ok ? badge("succeeded") : badge("failed")),
    h("div", { class: "cards", id: "plan-counts" }, counts.map((k) => h("div", { class: "card", "data-count": k },
      h("div", { class: "n" }, String(s[k])), h("div", { class: "l" }, k)))),
    h("p", {}, `coverage ${pct(s.coverage.tensors)} of tensors, ${pct(s.coverage.elements)} of elements`),
    report.errors && report.errors.length ? h("div", { class: "alert" }, report.errors.join("; ")) : null,
    report.warnings.length ? h("div", { class: "note" }, report.warnings.join("; ")) : null,
    h("h3", {}, "Target keys, grouped"),
    h("div", { id: "plan-groups" }, entries(report.groups ? report.groups.entries : [])),
    h("details", { id: "plan-keys" }, h("summary", {}, `Every key (${report.entries.length})`),
      h("div", { class: "controls" }, h("div", {}, h("label", { for: "plan-status" }, "Status"), status)), table)];
}
