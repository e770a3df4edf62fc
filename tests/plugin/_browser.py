"""A real ``tensorboard`` process and headless Chromium on its BN Internals tab, for the tests.

``tensorboard(logdir, load_fast)`` starts ``tensorboard --logdir`` on
127.0.0.1 (``--load_fast=false``: the Python loader, ``true``: the Rust data
server) and always kills it; ``get_json`` reads a route. ``plugin_tab(base)``
opens Debian's ``/usr/bin/chromium`` through Playwright (never downloads a
browser) at the tab and yields the page and the plugin's iframe; the test
fails when the page threw or a dialog fired (script injection through a run or
layer name). ``requires_browser`` skips a test where Chromium or Playwright is
missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from tensorboard.data import server_ingester

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
STARTUP_TIMEOUT_S = 180
TIMEOUT_MS = 60_000


def browser_skip_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is absent (apt-get install chromium to run the browser part)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed"
    return None


requires_browser = pytest.mark.skipif(
    browser_skip_reason() is not None, reason=str(browser_skip_reason())
)


@contextlib.contextmanager
def tensorboard(logdir: str, load_fast: str) -> Iterator[str]:
    """``tensorboard --logdir logdir --port 0``; yields its base URL; always killed.

    Skips the test for ``load_fast="true"`` where the Rust data server is not installed.
    """
    if load_fast == "true":
        try:
            server_ingester.get_server_binary()
        except server_ingester.NoDataServerError as err:
            pytest.skip(f"--load_fast=true needs tensorboard_data_server: {err}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            logdir,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            f"--load_fast={load_fast}",
            "--reload_interval",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    lines: list[str] = []
    found = threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append(line)
            if re.search(r"http://127\.0\.0\.1:\d+/", line):
                found.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        if not found.wait(STARTUP_TIMEOUT_S) or proc.poll() is not None:
            pytest.fail("tensorboard did not start:\n" + "".join(lines[-40:]))
        url = next(
            m.group(0) for line in lines if (m := re.search(r"http://127\.0\.0\.1:\d+/", line))
        )
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


def plugin_frame(page: Any) -> Any:
    """The iframe TensorBoard loads the plugin's ES module into."""
    deadline = time.time() + TIMEOUT_MS / 1000
    while time.time() < deadline:
        for frame in page.frames:
            if "plugin_entry.html?name=bn_internals" in frame.url:
                frame.wait_for_selector("[data-bn-app]")
                return frame
        page.wait_for_timeout(200)
    pytest.fail(f"no BN Internals iframe among {[f.url for f in page.frames]}")


@contextlib.contextmanager
def plugin_tab(base: str, width: int = 1400, height: int = 900) -> Iterator[tuple[Any, Any]]:
    """(page, plugin iframe) of headless Chromium at ``base#bn_internals``.

    After the block, fails the test if a dialog fired or the page threw.
    """
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    dialogs: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "#bn_internals")
            yield page, plugin_frame(page)
        finally:
            browser.close()
    assert not dialogs, f"a dialog fired (script injection?): {dialogs}"
    assert not errors, f"uncaught errors in the page: {errors}"
