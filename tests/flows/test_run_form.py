"""The Prefect UI's Run form of a deployed task, in both of Prefect 3.9's UIs, in a real browser.

A real `prefect server start`, the quickstart deployed with flows.deploy, and the
deployment's custom-run page opened in headless Chromium: in the V1 UI (served at /) and
the V2 UI (at /v2). What is asserted is what the page renders: the fields by their labels,
the union tab each one shows, the value in each input; then a field is edited and the
form submitted, and the run it made is read back from the server.
"""

from __future__ import annotations

import copy
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flows import prefect_server

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_PAGES = {"v1": "/deployments/deployment/{id}/run", "v2": "/v2/deployments/deployment/{id}/run"}
SOURCE = "task.spec.model.source"
RANK = "task.spec.model.adapter.r"

# The form as a user reads it: each labelled field by its path of labels ("task.spec.model.source.path"),
# the controls it holds itself (not those of fields nested in it), their values, and its selected
# union tab. With a path given instead, that field's first control, to type into.
FORM = """
([ui, wanted]) => {
  const FIELD = ui === "v1" ? ".schema-form-property" : "div.group";
  const label = (el) => {
    const text = ui === "v1"
      ? el.querySelector(":scope > .p-label__header .schema-form-property__label")
      : el.querySelector(":scope > div > div > label");
    return text ? text.textContent.replace("(Optional)", "").trim() : "";
  };
  const up = (el) => (el.parentElement ? el.parentElement.closest(FIELD) : null);
  const owner = (el) => {
    for (let f = el.closest(FIELD); f; f = up(f)) if (label(f)) return f;
    return null;
  };
  const path = (el) => {
    const names = [];
    for (let f = el; f; f = up(f)) if (label(f)) names.unshift(label(f));
    return names.join(".");
  };
  const EDITOR = ".p-code-input, .cm-editor";
  const CONTROL = "textarea, input, button[aria-haspopup=listbox], button.p-select-button__control, button[role=switch]";
  const fields = {};
  for (const el of document.querySelectorAll(FIELD)) {
    if (!label(el)) continue;
    const field = { kinds: [], values: [], tab: null };
    const controls = [];
    for (const c of el.querySelectorAll(EDITOR)) {
      if (owner(c) === el) { field.kinds.push("json"); field.values.push(c.innerText); }
    }
    for (const c of el.querySelectorAll(CONTROL)) {
      if (owner(c) !== el || c.closest(EDITOR) || c.getAttribute("aria-hidden") === "true") continue;
      controls.push(c);
      if (c.getAttribute("role") === "switch") { field.kinds.push("switch"); field.values.push(c.getAttribute("aria-checked")); }
      else if (c.tagName === "BUTTON") { field.kinds.push("select"); field.values.push(c.innerText.trim()); }
      else if (c.type === "checkbox") { field.kinds.push("switch"); field.values.push(String(c.checked)); }
      else { field.kinds.push(c.type === "number" ? "number" : "text"); field.values.push(c.value); }
    }
    const tab = [...el.querySelectorAll("[role=tab][aria-selected=true], .p-button-group__button[aria-selected=true]")]
      .find((t) => owner(t) === el);
    if (tab) field.tab = tab.innerText.trim();
    const name = path(el);
    if (wanted === name) return controls[0] || null;
    if (!(name in fields)) fields[name] = field;
  }
  return wanted ? null : fields;
}
"""


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory: pytest.TempPathFactory, port_picker: Callable[[], int]) -> Iterator[str]:
    """`prefect server start` with its UIs; yields the server's base URL."""
    home = tmp_path_factory.mktemp("prefect-ui")
    port = port_picker()
    base = f"http://127.0.0.1:{port}"
    # the UI asks the API at PREFECT_API_URL; without it, at the default port, not this one
    env = prefect_server.server_env(home, port, PREFECT_UI_ENABLED="true")
    with prefect_server.running(env, port, home / "server.log"):
        yield base


@pytest.fixture(scope="module")
def deployed(prefect_ui: str) -> Iterator[tuple[Any, Any]]:
    """The quickstart deployed on the local pool as `mloc deploy --local` does; yields (plan, client)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import work_pools
    from configs import validate_file
    from flows import deploy
    from tasks.registry import TASK_TYPES

    task = validate_file(QUICKSTART, TASK_TYPES).task
    assert task is not None
    plan = deploy.plan(task, QUICKSTART, local=True)
    with temporary_settings({PREFECT_API_URL: f"{prefect_ui}/api"}), get_client(sync_client=True) as client:
        work_pools.apply(client)
        assert deploy.apply(plan, client) == "created"
        assert deploy.apply(plan, client) == "unchanged"  # the schema compares equal after the round trip
        yield plan, client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def settled_form(page: Any, ui: str) -> dict[str, dict[str, Any]]:
    """The form's fields once they stop changing (V1 picks union tabs asynchronously)."""
    page.wait_for_function(f"({FORM})([{ui!r}, null]).task !== undefined", timeout=30_000)
    fields, deadline = None, time.monotonic() + 15
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        now = page.evaluate(FORM, [ui, None])
        if now == fields:
            break
        fields = now
    assert fields is not None
    return fields


def runs_of(client: Any, deployment_id: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    found = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return {str(run.id): run for run in found}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine; .ci/run installs Debian's")
@pytest.mark.parametrize("ui", ["v1", "v2"])
@pytest.mark.slow
@pytest.mark.e2e
def test_run_form_shows_the_task_as_fields(
    ui: str, prefect_ui: str, deployed: tuple[Any, Any], tmp_path: Path, browser: Any
) -> None:
    plan, client = deployed
    deployment = client.read_deployment_by_name(f"mloc/{plan.name}")
    page = browser.new_page(viewport={"width": 1280, "height": 8000})  # V1 scrolls inside; all of it in view
    page.goto(prefect_ui + RUN_PAGES[ui].format(id=deployment.id))
    fields = settled_form(page, ui)
    page.screenshot(path=str(tmp_path / f"run-form-{ui}.png"), full_page=True)

    # every source and destination of the quickstart is local: no S3 field anywhere
    buckets = [name for name in fields if name.split(".")[-1].lower() == "bucket"]
    assert not buckets, f"S3 fields shown for local sources: {buckets}"
    hidden = [name for name in fields if name.split(".")[-1] in ("base_dir", "task_yaml_sha256")]
    assert not hidden, f"MLOC's own parameters shown: {hidden}"
    assert SOURCE in fields, f"no field {SOURCE}; the form shows {sorted(fields)}"
    assert fields[SOURCE]["tab"] == "local", fields[SOURCE]
    assert fields[f"{SOURCE}.type"]["values"] == ["local"]
    assert fields[f"{SOURCE}.path"] == {"kinds": ["text"], "values": ["quickstart/tiny-model"], "tab": None}
    assert not [name for name in fields if name.startswith(f"{SOURCE}.") and name.endswith(".identifier")]
    assert fields["task.spec.dataset.source.path"]["values"] == ["quickstart/qa.jsonl"]
    assert fields["task.spec.output.destination"]["tab"] == "local"
    assert fields["task.spec.output.destination.path"]["values"] == ["../.mloc/outputs/quickstart-tiny-sft"]
    assert fields["task.spec.model.adapter"]["tab"] == "lora"
    assert fields[RANK] == {"kinds": ["number"], "values": ["8"], "tab": None}
    assert fields["task.spec.evaluation.backend"] == {"kinds": ["select"], "values": ["auto"], "tab": None}
    inputs = [name for name, field in fields.items() if {"text", "number", "select", "switch"} & set(field["kinds"])]
    assert len(inputs) >= 30, inputs
    editors = sorted(name for name, field in fields.items() if "json" in field["kinds"])
    assert editors == ["task.metadata.annotations", "task.spec.hyperparameters"]  # free-form maps, see README

    # another source type: its own fields, its type filled in; back again, the path is as it was
    tabs = page.locator(".p-button-group__button" if ui == "v1" else "[role=tab]")
    source = page.locator(".schema-form-property" if ui == "v1" else "div.group")
    source = source.filter(has=page.get_by_text("Where the base model comes from.", exact=True)).last
    source.locator(tabs).filter(has_text="s3").first.click()
    fields = settled_form(page, ui)
    assert fields[SOURCE]["tab"] == "s3" and fields[f"{SOURCE}.type"]["values"] == ["s3"]
    assert fields[f"{SOURCE}.bucket"]["kinds"] == ["text"]
    source.locator(tabs).filter(has_text="local").first.click()
    fields = settled_form(page, ui)
    assert fields[SOURCE]["tab"] == "local" and fields[f"{SOURCE}.path"]["values"] == ["quickstart/tiny-model"]

    # an edit reaches the run; the parameters the form does not show come from the deployment
    rank = {"v1": 4, "v2": 2}[ui]
    page.evaluate_handle(FORM, [ui, RANK]).as_element().fill(str(rank))
    before = runs_of(client, deployment.id)
    page.get_by_role("button", name="Submit").click()
    deadline = time.monotonic() + 30
    while not (new := [r for i, r in runs_of(client, deployment.id).items() if i not in before]):
        assert time.monotonic() < deadline, "submitting the Run form made no flow run"
        time.sleep(0.5)
    wanted = copy.deepcopy(plan.parameters)
    wanted["task"]["spec"]["model"]["adapter"]["r"] = rank
    assert new[0].parameters == wanted


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_given_only_the_task_gets_the_rest_from_the_deployment(deployed: tuple[Any, Any]) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    plan, client = deployed
    deployment = client.read_deployment_by_name(f"mloc/{plan.name}")
    run = client.create_flow_run_from_deployment(deployment.id, parameters={"task": plan.parameters["task"]})
    assert run.parameters == plan.parameters
    assert plan.parameters["base_dir"] == str(QUICKSTART.resolve().parent)
    # enforce_parameter_schema still holds the task to the schema: this deployment runs TrainingTasks
    other = {**plan.parameters["task"], "kind": "InferenceTask"}
    with pytest.raises(PrefectHTTPStatusError, match="409"):
        client.create_flow_run_from_deployment(deployment.id, parameters={"task": other})


def ui_tab(value: dict[str, Any], branches: list[dict[str, Any]]) -> int:
    """The union tab both UIs of Prefect 3.9 show for an object value (the same rule in both
    bundles): the first branch with the most keys in common with the value."""
    best, most = 0, 0
    for index, branch in enumerate(branches):
        shared = len(set(value) & set(branch.get("properties", {})))
        if shared > most:
            best, most = index, shared
    return best


@pytest.mark.parametrize("kind", ["TrainingTask", "InferenceTask"])
def test_every_union_shows_the_tab_of_its_value(kind: str) -> None:
    """For every source, destination and adapter type, not only the quickstart's local ones:
    a dumped value (all its keys) and the value right after its tab is picked (the defaulted
    keys, which the V1 UI picks a tab for again) both keep that tab."""
    from flows.run_form import parameter_schema

    definitions = parameter_schema(kind)["definitions"]

    def resolved(branch: dict[str, Any]) -> dict[str, Any]:
        return definitions[branch["$ref"].rsplit("/", 1)[-1]] if "$ref" in branch else branch

    checked = []
    for owner, definition in definitions.items():
        for name, prop in definition.get("properties", {}).items():
            branches = [resolved(b) for b in prop.get("anyOf", [])]
            objects = [i for i, b in enumerate(branches) if b.get("type") == "object" and b.get("properties")]
            for index in objects if len(objects) > 1 else []:
                properties = branches[index]["properties"]
                title = f"{owner}.{name}: {branches[index]['title']}"
                assert ui_tab(dict.fromkeys(properties), branches) == index, title
                assert ui_tab({k: v["default"] for k, v in properties.items() if "default" in v}, branches) == index, (
                    title
                )
                checked.append(title)
    if kind == "TrainingTask":
        assert "ModelSpec.source: local" in checked and "ModelSpec.adapter: qlora" in checked
    else:
        assert "InferenceModelSpec.source: remote" in checked and "Retrieval.documents: huggingface" in checked
