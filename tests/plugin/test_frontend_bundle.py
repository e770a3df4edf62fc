"""The shipped frontend bundle is fresh, self-contained and safe (no Node needed).

``tb_bn_plugin/plugin/static/index.js`` is built from ``frontend/`` by
``npm --prefix frontend run build`` and committed, so ``pip install`` needs no
Node. Its first line is ``/* tb-bn-sources-sha256: <hex> */``, a hash of the
sources it was built from (see ``frontend/build.mjs``); this test recomputes it
and fails when the sources changed without a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FRONTEND = REPO / "frontend"
BUNDLE = REPO / "tb_bn_plugin" / "plugin" / "static" / "index.js"
REBUILD = "run `npm --prefix frontend ci && npm --prefix frontend run build`"
BANNER_RE = re.compile(r"^/\* tb-bn-sources-sha256: ([0-9a-f]{64}) \*/")
MAX_BUNDLE_BYTES = 1_500_000


def source_files() -> list[str]:
    """Same set and order as build.mjs: src/**, package.json, package-lock.json, build.mjs."""
    files = [
        p.relative_to(FRONTEND).as_posix() for p in (FRONTEND / "src").rglob("*") if p.is_file()
    ]
    files += ["package.json", "package-lock.json", "build.mjs"]
    return sorted(files)


def sources_hash() -> str:
    h = hashlib.sha256()
    for rel in source_files():
        data = (FRONTEND / rel).read_bytes().replace(b"\r\n", b"\n")
        h.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bundle_text() -> str:
    assert BUNDLE.is_file(), f"{BUNDLE.relative_to(REPO)} is missing: {REBUILD}"
    return BUNDLE.read_text(encoding="utf-8")


def test_sources_present():
    for rel in ("package.json", "package-lock.json", "build.mjs", "src/index.js", "API.md"):
        assert (FRONTEND / rel).is_file(), f"frontend/{rel} is missing"
    pkg = json.loads((FRONTEND / "package.json").read_text(encoding="utf-8"))
    assert pkg["scripts"]["build"], "package.json needs a build script"
    lock = json.loads((FRONTEND / "package-lock.json").read_text(encoding="utf-8"))
    locked = lock.get("packages", {})
    for dep, version in {**pkg.get("dependencies", {}), **pkg.get("devDependencies", {})}.items():
        entry = locked.get(f"node_modules/{dep}")
        assert entry, (
            f"{dep} is in package.json but not in package-lock.json: "
            "run `npm --prefix frontend install`"
        )
        assert entry["version"] == version, (
            f"{dep}: package.json pins {version}, lock has {entry['version']}"
        )


def test_bundle_is_fresh(bundle_text):
    m = BANNER_RE.match(bundle_text)
    assert m, f"bundle has no sources-hash banner: {REBUILD}"
    expected = sources_hash()
    assert m.group(1) == expected, (
        f"tb_bn_plugin/plugin/static/index.js is stale (built from sources {m.group(1)[:12]}…, "
        f"sources are now {expected[:12]}…): {REBUILD}"
    )


def test_bundle_size(bundle_text):
    size = len(bundle_text.encode("utf-8"))
    assert size < MAX_BUNDLE_BYTES, (
        f"bundle is {size / 1e6:.2f} MB, budget {MAX_BUNDLE_BYTES / 1e6:.1f} MB"
    )


def test_bundle_is_an_es_module_exporting_render(bundle_text):
    # TensorBoard's entry page runs: import("./index.js").then((m) => void m.render());
    tail = bundle_text[-2000:]
    assert re.search(r"export\s*\{[^}]*\b(?:\w+\s+as\s+)?render\s*[,}]", tail), (
        "bundle must `export { render }`"
    )


def test_bundle_loads_nothing_from_elsewhere(bundle_text):
    # TensorBoard's CSP allows scripts/styles/fonts from 'self' only (plus inline styles).
    for needle in (
        "cdn.jsdelivr",
        "unpkg.com",
        "cdnjs.",
        "fonts.googleapis",
        "fonts.gstatic",
        "googletagmanager",
    ):
        assert needle not in bundle_text, f"bundle references {needle}"
    assert not re.search(r"import\(\s*[\"']https?:", bundle_text)
    assert not re.search(r"\bfrom\s*[\"']https?:", bundle_text)


def test_sources_insert_no_html():
    """Names from logs go in as text: no innerHTML-style sinks anywhere in our sources."""
    sinks = re.compile(
        r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|createContextualFragment|DOMParser|srcdoc"
    )
    offenders = []
    for path in (FRONTEND / "src").rglob("*.js"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if sinks.search(line) and not line.lstrip().startswith("//"):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "HTML sinks in frontend sources:\n" + "\n".join(offenders)


def test_api_doc_names_every_route():
    doc = (FRONTEND / "API.md").read_text(encoding="utf-8")
    for route in (
        "`runs`",
        "`layer?run=R&layer=PATH&resolution=N[&channel=K]`",
        "`gap?run=R`",
        "`diagnostics[?run=R]`",
        "`graph?run=R`",
    ):
        assert route in doc, f"API.md does not document {route}"
