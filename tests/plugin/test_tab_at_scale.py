"""The tab at real scale, in a real ``tensorboard`` and headless Chromium, for both loaders.

The logdir (``_scale_logdir``) holds two ``keras.applications.MobileNetV2``
runs (52 BN layers each, momentum 0.99 and 0.9), the small ``train`` run and
its HTML-named copy, a graph-only run whose update ops are not wired, and a
MirroredStrategy run with per-replica statistics.
Checked in the browser: the run selector (regex, all/none, colours) filters
the overview and drives the layer detail's overlay (``compare`` route) and
the gap overlay; the layer picker searches, orders worst first and steps with
the keys; Diagnostics shows one card per (run, code) with a sortable table of
the affected layers, graph findings included, linking to the Graph view's
site; the overview's run cards show graph findings; the layer detail shows
per-replica statistics with the replica-batch-too-small evidence; hostile
names stay text.
Screenshots go to the test's tmp folder; with ``TB_BN_UPDATE_SCREENSHOT=1`` the
compare view and the grouped Diagnostics are copied to ``docs/``.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
from urllib.parse import urlencode

import pytest
from _browser import STARTUP_TIMEOUT_S, get_json, plugin_tab, requires_browser, tensorboard
from _plugin_logdir import HOSTILE, LAYERS
from _scale_logdir import (
    MIRRORED,
    MOBILENET_BN_LAYERS,
    MOBILENET_RUNS,
    UNWIRED,
    write_scale_logdir,
)
from test_tensorboard_e2e import REPO

ROUTES = "data/plugin/bn_internals/"
FIRST, SECOND = MOBILENET_RUNS  # momentum 0.99, 0.9
LAYER = "bn_Conv1"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scale"))
    write_scale_logdir(root)
    return root


def wait_for_runs(base: str) -> dict:
    """The runs route once TensorBoard has loaded every run (it loads in the background)."""
    deadline, body = time.time() + STARTUP_TIMEOUT_S, None
    while time.time() < deadline:
        body = get_json(base + ROUTES + "runs")
        runs = {r["run"]: r for r in body["runs"]}
        complete = {*MOBILENET_RUNS, UNWIRED, MIRRORED, "train", HOSTILE} <= set(runs) and all(
            len(runs[r]["layers"]) == MOBILENET_BN_LAYERS
            and runs[r]["gap"] is not None
            and runs[r]["gap"]["step"] == 16
            for r in MOBILENET_RUNS
        )
        if complete and runs[UNWIRED]["graph_findings"]:
            return runs
        time.sleep(1)
    pytest.fail(f"the runs route never listed every run: {body}")


@pytest.fixture(scope="module", params=["false", "true"])
def server(request, logdir):
    with tensorboard(logdir, request.param) as base:
        yield base, request.param, wait_for_runs(base)


def test_compare_route_over_real_runs(server):
    base, _, runs = server
    body = get_json(
        base + ROUTES + "compare?" + urlencode({"layer": LAYER, "run": [FIRST, SECOND]}, doseq=True)
    )
    assert [r["run"] for r in body["runs"]] == [FIRST, SECOND]
    assert [r["momentum"] for r in body["runs"]] == [0.99, 0.9]
    for series in body["runs"]:
        assert len(series["steps"]) == runs[series["run"]]["layers"][0]["num_steps"]
    with pytest.raises(urllib.error.HTTPError) as err:
        get_json(
            base
            + ROUTES
            + "compare?"
            + urlencode({"layer": LAYER, "run": [FIRST, "nope"]}, doseq=True)
        )
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        get_json(base + ROUTES + "compare?" + urlencode({"layer": LAYER}))
    assert err.value.code == 400


def _hash(frame, **state) -> None:
    frame.evaluate("h => { location.hash = h; }", urlencode(state))


def _rows(frame) -> list[list[str]]:
    return frame.eval_on_selector_all(
        "[data-view=overview] tr[data-layer]", "rs => rs.map(r => [r.dataset.run, r.dataset.layer])"
    )


def _worst_first(layers: list[dict], key: str) -> list[str]:
    score = lambda l: abs(l[key]) if l[key] is not None else -1  # noqa: E731
    return [l["path"] for l in sorted(layers, key=lambda l: (-score(l), l["index"]))]


def _cards(frame):
    """(run, code, fixes shown) of each Diagnostics card."""
    return frame.eval_on_selector_all(
        "article.finding",
        "as => as.map(a => [a.dataset.run, a.dataset.code, a.querySelectorAll('p.fix').length])",
    )


def _affected_order(frame, card):
    return frame.eval_on_selector_all(
        f"{card} tr[data-layer]", "rs => rs.map(r => r.dataset.layer)"
    )


@requires_browser
def test_tab_at_scale_in_headless_chromium(server, tmp_path):
    base, load_fast, runs = server
    diagnosed = get_json(base + ROUTES + "diagnostics")["diagnostics"]
    with plugin_tab(base, height=1000) as (page, frame):
        # Overview: every run's layers; the graph-only run's card shows its graph finding.
        frame.wait_for_selector("[data-view=overview] tr[data-layer]")
        every = 2 * MOBILENET_BN_LAYERS + 2 * len(LAYERS) + 1  # mirrored: one layer
        assert len(_rows(frame)) == every
        badge = frame.wait_for_selector(
            f'.run-card[data-run="{UNWIRED}"] [data-role=graph-findings] '
            ".badge[data-code=update-ops-not-wired]"
        )
        assert badge.get_attribute("data-severity") == "warning"
        options = frame.eval_on_selector_all(
            ".run-option[data-run]", "os => os.map(o => o.textContent)"
        )
        assert HOSTILE in options and len(options) == 6
        # A run card counts its statistics problems as Diagnostics does: one per code, and the
        # layers they name.
        for severity in ("error", "warning"):
            found = [
                f
                for f in diagnosed
                if f["run"] == FIRST and f["severity"] == severity and "layers" in f
            ]
            badge = frame.query_selector(
                f'.run-card[data-run="{FIRST}"] [data-role=run-problems] '
                f".badge[data-severity={severity}]"
            )
            if not found:
                assert badge is None
                continue
            assert badge.get_attribute("data-problems") == str(len({f["code"] for f in found}))
            named = {layer for f in found for layer in f["layers"]}
            assert badge.get_attribute("data-layers") == str(len(named))

        # Run selector: the regex shows some runs; all/none apply to those.
        frame.fill("input[data-control=run-regex]", "^(?!mobilenet)")
        frame.wait_for_function("document.querySelectorAll('.run-option').length === 4")
        frame.click("[data-action=select-none]")
        frame.wait_for_selector("[data-role=run-selector][data-selected='2']")
        assert {r[0] for r in _rows(frame)} == set(MOBILENET_RUNS)
        assert len(_rows(frame)) == 2 * MOBILENET_BN_LAYERS
        frame.fill("input[data-control=run-regex]", "")
        frame.wait_for_function("document.querySelectorAll('.run-option').length === 6")
        swatches = frame.eval_on_selector_all(
            ".run-option .run-swatch", "ss => ss.map(s => s.style.background)"
        )
        assert len(set(swatches)) == 6  # a colour per run

        # Layer detail: the chosen layer overlaid across the two selected runs.
        frame.click(f'tr[data-run="{FIRST}"][data-layer="{LAYER}"] .layer-link')
        compare = frame.wait_for_selector(
            f'.compare-view[data-layer="{LAYER}"][data-runs="2"] '
            "[data-chart=compare-mean_shift] canvas"
        )
        assert compare.evaluate("c => c.closest('[data-chart]').dataset.series") == "2"
        assert frame.eval_on_selector_all(".compare-run", "rs => rs.map(r => r.dataset.run)") == [
            FIRST,
            SECOND,
        ]
        frame.locator("[data-role=compare]").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / f"compare-{load_fast}.png"))

        # Layer navigation: worst drift first, next/previous keys, search.
        nav = frame.wait_for_selector(f"[data-role=layer-nav][data-layers='{MOBILENET_BN_LAYERS}']")
        assert nav.get_attribute("data-position") == "1"
        frame.select_option("select[data-control=layer-order]", "drift")
        order = _worst_first(runs[FIRST]["layers"], "drift")
        frame.wait_for_selector(
            f"[data-role=layer-nav][data-order=drift][data-position='{order.index(LAYER) + 1}']"
        )
        frame.click("h2")  # focus off the select: the keys work outside form fields
        page.keyboard.press("]")
        nxt = order[order.index(LAYER) + 1] if order.index(LAYER) + 1 < len(order) else LAYER
        frame.wait_for_selector(f'.layer-detail[data-layer="{nxt}"]')
        page.keyboard.press("[")
        frame.wait_for_selector(f'.layer-detail[data-layer="{LAYER}"]')
        frame.fill("input[data-control=layer-search]", "block_16")
        hits = [path for path in order if "block_16" in path]
        assert len(hits) == 3
        listed = frame.eval_on_selector_all(
            "select[data-control=layer] option:not([disabled])", "os => os.map(o => o.value)"
        )
        assert listed == hits
        frame.press("input[data-control=layer-search]", "Enter")
        frame.wait_for_selector(f'.layer-detail[data-layer="{hits[0]}"]')

        # Gap: the selected runs' losses on one chart.
        state_hash = frame.evaluate("location.hash")
        frame.click("[role=tab][data-tab=gap]")
        gap = frame.wait_for_selector("[data-card=gap-compare][data-runs='2'] canvas")
        assert gap.evaluate("c => c.closest('[data-chart]').dataset.series") == "4"
        assert "desel" in state_hash  # the selection is in the state that survives views

        # Diagnostics: one card per (run, code), the fix once, a table of the affected layers;
        # like the overview, only the selected runs' (the two MobileNet runs here).
        frame.click("[role=tab][data-tab=diagnostics]")
        frame.wait_for_selector("[data-view=diagnostics] article.finding")
        cards = _cards(frame)
        expected = {(f["run"], f["code"]) for f in diagnosed}
        assert sorted((r, c) for r, c, _ in cards) == sorted(
            (r, c) for r, c in expected if r in MOBILENET_RUNS
        )
        assert all(fixes == 1 for _, _, fixes in cards)
        slow = f'article.finding[data-code=slow-momentum][data-run="{FIRST}"]'
        affected = [
            f["layers"][0] for f in diagnosed if f["run"] == FIRST and f["code"] == "slow-momentum"
        ]
        assert len(affected) > 10
        assert (
            frame.eval_on_selector_all(
                f"{slow} tr[data-layer]", "rs => rs.map(r => r.dataset.layer)"
            )
            == affected
        )
        key = frame.get_attribute(f"{slow} th[data-sort-key] button", "data-sort-col")
        frame.click(f"{slow} th[data-sort-key] button")
        values = frame.eval_on_selector_all(
            f'{slow} td[data-key="{key}"]', "cs => cs.map(c => Number(c.textContent))"
        )
        assert values == sorted(values, reverse=True)
        by_value = _affected_order(frame, slow)
        assert by_value != affected
        # The user's sort survives re-renders: a reload, leaving the view and coming back.
        frame.click("[data-action=refresh]")
        frame.wait_for_selector("section[data-view=diagnostics][data-state=ready]")
        assert _affected_order(frame, slow) == by_value
        frame.click(f'{slow} tr[data-layer="{affected[-1]}"] .layer-link')
        frame.wait_for_selector(f'.layer-detail[data-run="{FIRST}"][data-layer="{affected[-1]}"]')

        frame.click("[role=tab][data-tab=diagnostics]")
        frame.wait_for_selector(f"{slow} tr[data-layer]")
        assert _affected_order(frame, slow) == by_value
        assert frame.get_attribute(f'{slow} th[data-sort-key="{key}"]', "aria-sort") == "descending"
        # Every run selected: every run's problems, the graph-only run's included.
        frame.click("[data-view=diagnostics] [data-action=select-all]")
        frame.wait_for_selector(
            "[data-view=diagnostics] [data-role=run-selector][data-selected='6']"
        )
        assert sorted((r, c) for r, c, _ in _cards(frame)) == sorted(expected)
        unwired = frame.wait_for_selector(
            f'article.finding[data-code=update-ops-not-wired][data-run="{UNWIRED}"]'
        )
        assert unwired.eval_on_selector_all(
            "tr[data-site]", "rs => rs.map(r => r.dataset.site)"
        ) == [
            "a/bn",
            "b/bn",
        ]
        # The card's head at the top of the screenshot (the card is taller than the window).
        frame.eval_on_selector(slow, "a => a.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(tmp_path / f"diagnostics-{load_fast}.png"))
        frame.click(f'article.finding[data-run="{UNWIRED}"] tr[data-site="b/bn"] .site-link')
        frame.wait_for_selector(
            f'.graph-view[data-run="{UNWIRED}"] .site[data-site="b/bn"] svg.site-graph'
        )
        assert frame.evaluate("new URLSearchParams(location.hash.slice(1)).get('site')") == "b/bn"
        assert frame.evaluate("document.querySelectorAll('img, iframe').length") == 0

        # The callback's graph of a MobileNetV2 run: every site (op scope) names its layer.
        _hash(frame, view="graph", run=FIRST)
        frame.wait_for_selector(f'.graph-view[data-run="{FIRST}"] .site svg.site-graph')
        site_layers = frame.eval_on_selector_all(
            ".graph-view .site[data-site]", "ss => ss.map(s => [s.dataset.site, s.dataset.layer])"
        )
        assert len(site_layers) == MOBILENET_BN_LAYERS
        assert sorted(layer for _, layer in site_layers) == sorted(
            layer["path"] for layer in runs[FIRST]["layers"]
        )
        assert all(site != layer for site, layer in site_layers)

        # Per-replica statistics (only this run logs a layer "bn": no overlay).
        _hash(frame, view="layer", run=MIRRORED, layer="bn")
        frame.wait_for_selector(
            f'.layer-detail[data-run="{MIRRORED}"] [data-chart=replicas-mean] canvas'
        )
        assert frame.get_attribute("[data-chart=replicas-mean]", "data-series") == "3"
        evidence = frame.wait_for_selector(
            "[data-role=replica-finding][data-code=replica-batch-too-small]"
        )
        assert evidence.query_selector(".evidence tr[data-key=per_replica_count]")
        assert not frame.query_selector("[data-role=compare]")
    if os.environ.get("TB_BN_UPDATE_SCREENSHOT") == "1":
        for name in ("compare", "diagnostics"):
            shutil.copy(tmp_path / f"{name}-{load_fast}.png", REPO / "docs" / f"{name}.png")
