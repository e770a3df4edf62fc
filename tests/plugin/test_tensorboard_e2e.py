"""A real ``tensorboard`` process over a logdir written by ``BatchNormCallback``.

For each loader (``--load_fast=false``: Python; ``--load_fast=true``: the Rust
data server, skipped when not installed): the plugin is listed, its routes
serve every logged step (16, not TensorBoard's default 10), and, when
``/usr/bin/chromium`` and the ``playwright`` package exist, headless Chromium
shows the BN Internals tab: the overview lists the layers, a layer's charts
plot every logged step, the graph view draws both paths and names each site's
layer, the EMA-vs-precise error chart plots every measurement of the demo's
``slow-momentum`` run (which has a ``PreciseStatsMonitor``), a run without the
monitor shows how to enable it, and the demo's ``momentum-one`` run (the
finding from its logs and from its graph) has one Diagnostics row per layer,
linked to its graph site. The TensorBoard process and the browser come from
``_browser``. Screenshots go to the test's tmp folder; with
``TB_BN_UPDATE_SCREENSHOT=1`` the layer detail's is copied to ``docs/screenshot.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest
from _browser import STARTUP_TIMEOUT_S, get_json, plugin_tab, requires_browser, tensorboard
from _plugin_logdir import HOSTILE, LAYERS, LOGGED_STEPS, write_logdir
from demo_runs import demo

REPO = Path(__file__).resolve().parents[2]
SLOW = "slow-momentum"  # the demo scenario with a PreciseStatsMonitor
SLOW_LAYER = "input_bn"
# The demo scenario with BN momentum 1: `momentum-one` from the logs and from its graph.
FROZEN_EMA = "momentum-one"


def monitor_steps() -> list[int]:
    """The steps of the slow-momentum monitor's measurements: each epoch's end at TEST size."""
    size = demo().TEST
    return [(epoch + 1) * (size.samples // size.batch) for epoch in range(size.epochs)]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("logdir"))
    write_logdir(root, corrupt_runs=False)
    demo().run_scenario(SLOW, root, verbose=0, size=demo().TEST)
    demo().run_scenario(FROZEN_EMA, root, verbose=0, size=demo().TEST)
    return root


def wait_for_layers(base: str) -> dict:
    """Poll until both runs show every logged step and the slow-momentum run every measurement.

    TensorBoard loads in the background.
    """
    deadline, body = time.time() + STARTUP_TIMEOUT_S, None
    while time.time() < deadline:
        body = get_json(base + "data/plugin/bn_internals/runs")
        runs = {r["run"]: r for r in body["runs"]}
        if (
            {"train", HOSTILE, SLOW, FROZEN_EMA} <= set(runs)
            and runs[FROZEN_EMA]["graph_findings"]
            and all(
                len(runs[r]["layers"]) == len(LAYERS)
                and {l["num_steps"] for l in runs[r]["layers"]} == {len(LOGGED_STEPS)}
                for r in ("train", HOSTILE)
            )
            and (ema_error(base, SLOW, SLOW_LAYER) or {}).get("steps") == monitor_steps()
        ):
            return runs
        time.sleep(1)
    pytest.fail(f"the runs route never listed every layer and step: {body}")


def ema_error(base: str, run: str, layer: str) -> dict | None:
    """The layer route's ``ema_error`` (None when not logged, or the layer is not loaded yet)."""
    try:
        return get_json(
            base + "data/plugin/bn_internals/layer?" + urlencode({"run": run, "layer": layer})
        )["ema_error"]
    except urllib.error.HTTPError:
        return None


@pytest.fixture(scope="module", params=["false", "true"])
def server(request, logdir):
    """(base URL, load_fast) of a TensorBoard process that has loaded every step."""
    with tensorboard(logdir, request.param) as base:
        wait_for_layers(base)
        yield base, request.param


def test_routes_serve_every_logged_step(server):
    base, _ = server
    listing = get_json(base + "data/plugins_listing")
    assert (
        listing["bn_internals"]["enabled"] and listing["bn_internals"]["tab_name"] == "BN Internals"
    )
    runs = {r["run"]: r for r in get_json(base + "data/plugin/bn_internals/runs")["runs"]}
    assert [l["path"] for l in runs["train"]["layers"]] == list(LAYERS) and runs["train"][
        "has_graph"
    ]
    for layer in LAYERS:
        detail = get_json(
            base + "data/plugin/bn_internals/layer?" + urlencode({"run": "train", "layer": layer})
        )
        assert detail["steps"] == LOGGED_STEPS and detail["ema_error"] is None
    assert ema_error(base, SLOW, SLOW_LAYER)["steps"] == monitor_steps()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(
            base + "data/plugin/bn_internals/layer?run=train&layer=nope", timeout=60
        )
    assert err.value.code == 404 and "error" in json.loads(err.value.read())


def test_graph_sites_name_their_layers(server):
    """The callback's graph names sites by op scope (``convnet_1/bn0_1``); the graph route,
    the overview and the diagnostics map each to its logged layer, here the layer owning the
    site's moving variables (``variables/bn0/moving_mean``: a functional model's own layers)."""
    base, _ = server
    graph = get_json(base + "data/plugin/bn_internals/graph?" + urlencode({"run": FROZEN_EMA}))
    runs = {r["run"]: r for r in get_json(base + "data/plugin/bn_internals/runs")["runs"]}
    owners = {site["name"]: site["moving_variables"][0].split("/")[1] for site in graph["sites"]}
    assert {site["name"]: site["layer"] for site in graph["sites"]} == owners
    assert sorted(owners.values()) == sorted(l["path"] for l in runs[FROZEN_EMA]["layers"])
    assert not set(owners) & set(owners.values())  # scopes are not layer paths
    (finding,) = graph["findings"]
    assert finding["code"] == "momentum-one" and finding["site_layers"] == owners
    (overview,) = runs[FROZEN_EMA]["graph_findings"]
    assert overview["site_layers"] == owners
    diagnosed = get_json(base + "data/plugin/bn_internals/diagnostics?run=" + FROZEN_EMA)
    assert [f["site_layers"] for f in diagnosed["diagnostics"] if "sites" in f] == [owners]
    # And the layer route names each layer's site (the way back from a layer to the graph).
    for site, layer in owners.items():
        detail = get_json(
            base
            + "data/plugin/bn_internals/layer?"
            + urlencode({"run": FROZEN_EMA, "layer": layer})
        )
        assert detail["graph_sites"] == [site]


@requires_browser
def test_layer_detail_links_to_its_graph_site(server):
    """Layer detail shows "in the graph: <site>" for the run graph's site of the layer, which
    opens the Graph view at that site; a hostile run name stays text."""
    base, _ = server
    graph = get_json(base + "data/plugin/bn_internals/graph?" + urlencode({"run": HOSTILE}))
    (site,) = [s["name"] for s in graph["sites"] if s["layer"] == "block1_bn"]
    with plugin_tab(base) as (_, frame):
        frame.evaluate(
            "h => { location.hash = h; }",
            urlencode({"view": "layer", "run": HOSTILE, "layer": "block1_bn"}),
        )
        strip = frame.wait_for_selector(
            '.layer-detail[data-layer="block1_bn"] [data-role=config] [data-role=graph-sites]'
        )
        assert strip.inner_text() == f"in the graph: {site}"
        link = strip.query_selector(".site-link")
        assert link.get_attribute("data-site") == site and link.get_attribute("data-run") == HOSTILE
        link.click()
        frame.wait_for_selector(f'.graph-view .site[data-site="{site}"][data-layer="block1_bn"]')
        assert frame.get_attribute(".graph-view", "data-run") == HOSTILE


@requires_browser
def test_tab_in_headless_chromium(server, tmp_path):
    base, load_fast = server
    with plugin_tab(base) as (page, frame):
        page.wait_for_selector("text=BN Internals")  # the tab in TensorBoard's header

        frame.wait_for_selector("[data-view=overview] tr[data-layer] .sparkline canvas")
        rows = frame.eval_on_selector_all(
            "[data-view=overview] tr[data-layer]",
            "rs => rs.map(r => [r.dataset.run, r.dataset.layer])",
        )
        assert sorted(r for r in rows if r[0] not in (SLOW, FROZEN_EMA)) == sorted(
            [[run, layer] for run in ("train", HOSTILE) for layer in LAYERS]
        )
        assert [SLOW, SLOW_LAYER] in rows
        page.screenshot(path=str(tmp_path / f"overview-{load_fast}.png"))

        frame.evaluate(
            "h => { location.hash = h; }",
            urlencode({"view": "layer", "run": "train", "layer": "block1_bn"}),
        )
        detail = frame.wait_for_selector('.layer-detail[data-layer="block1_bn"]')
        frame.wait_for_selector(
            '.layer-detail[data-layer="block1_bn"] .chart-body[data-chart=mean] canvas'
        )
        assert (
            detail.get_attribute("data-points")
            == detail.get_attribute("data-num-steps")
            == str(len(LOGGED_STEPS))
        )
        assert frame.get_attribute(".chart-body[data-chart=mean]", "data-points") == str(
            len(LOGGED_STEPS)
        )
        assert "PreciseStatsMonitor" in detail.query_selector("[data-note=ema-error]").inner_text()
        assert not detail.query_selector("[data-chart=ema_error]")
        page.screenshot(path=str(tmp_path / f"layer-{load_fast}.png"))

        frame.evaluate(
            "h => { location.hash = h; }",
            urlencode({"view": "layer", "run": SLOW, "layer": SLOW_LAYER}),
        )
        chart = frame.wait_for_selector(
            f'.layer-detail[data-run="{SLOW}"][data-layer="{SLOW_LAYER}"] '
            ".chart-body[data-chart=ema_error] canvas"
        )
        assert chart.evaluate("c => c.closest('[data-chart]').dataset.points") == str(
            len(monitor_steps())
        )
        assert not frame.query_selector("[data-note=ema-error]")
        assert "tb_bn_plugin.recalibrate(" in frame.inner_text(
            "[data-card=ema_error] [data-hint=recalibrate]"
        )
        frame.locator("[data-card=ema_error]").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / f"ema-error-{load_fast}.png"))

        # Its ema-error finding holds evidence per layer: in that layer's row, spelled out,
        # not "[object Object]".
        frame.evaluate(
            "h => { location.hash = h; }", urlencode({"view": "diagnostics", "run": SLOW})
        )
        finding = frame.wait_for_selector(f'.finding[data-code=ema-error][data-run="{SLOW}"]')
        shift = finding.query_selector(
            f'tr[data-layer="{SLOW_LAYER}"] td[data-key=mean_shift]'
        ).inner_text()
        assert float(shift) > 0 and "[object" not in finding.inner_text()

        frame.evaluate("h => { location.hash = h; }", urlencode({"view": "graph", "run": "train"}))
        site = frame.wait_for_selector('.site[data-site*="block1_bn"] svg.site-graph')
        assert site.query_selector(".node.path-training") and site.query_selector(
            ".node.path-inference"
        )
        page.screenshot(path=str(tmp_path / f"graph-{load_fast}.png"))
        # A site names its logged layer and opens its detail.
        frame.click('.site[data-layer="block1_bn"] [data-role=site-layer] .layer-link')
        frame.wait_for_selector('.layer-detail[data-run="train"][data-layer="block1_bn"]')

        # momentum-one from the logs and from the graph: one card, one row per layer, each
        # with its graph site (not a second row per site), opening the Graph view there.
        frame.evaluate(
            "h => { location.hash = h; }",
            urlencode({"view": "diagnostics", "run": FROZEN_EMA}),
        )
        card = frame.wait_for_selector(
            f'article.finding[data-code=momentum-one][data-run="{FROZEN_EMA}"]'
        )
        layers = card.eval_on_selector_all("tr[data-layer]", "rs => rs.map(r => r.dataset.layer)")
        assert len(layers) == 4 and not card.query_selector("tr[data-site]")
        assert card.get_attribute("data-count") == "4"
        assert len(card.query_selector_all("p.fix")) == 1
        row = card.query_selector(f'tr[data-layer="{layers[0]}"]')
        site_link = row.query_selector("[data-role=graph-sites] .site-link")
        site_name = site_link.get_attribute("data-site")
        assert site_name != layers[0] and site_name.split("/")[-1].startswith(layers[0])
        # The graph's evidence line, without the site's name the row already shows.
        graph = row.query_selector("td[data-key=graph]").inner_text()
        assert graph.startswith("momentum 1 read from ")
        site_link.click()
        frame.wait_for_selector(
            f'.graph-view[data-run="{FROZEN_EMA}"] .site[data-site="{site_name}"]'
            f'[data-layer="{layers[0]}"]'
        )
        # The Graph view's own finding card names each site's layer, as each site does.
        pairs = frame.eval_on_selector_all(
            ".graph-view article.finding tr[data-site]",
            "rs => rs.map(r => [r.dataset.site, "
            "r.querySelector('[data-role=site-layer] .layer-link').dataset.layer])",
        )
        assert sorted(layer for _, layer in pairs) == sorted(layers)
        for name, layer in pairs:
            assert frame.get_attribute(f'.site[data-site="{name}"]', "data-layer") == layer
    if os.environ.get("TB_BN_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(tmp_path / f"layer-{load_fast}.png", REPO / "docs" / "screenshot.png")
