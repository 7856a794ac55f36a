"""The web demo in a real browser: Debian's Chromium (``/usr/bin/chromium``, from apt) driven by
Playwright, against the real platform (TorchServe, ONNX, Paddle, gateway) on free ports.

Playwright never downloads a browser here: it launches ``executable_path=/usr/bin/chromium``
headless, with background networking off. Screenshots go to ``$TRISERVE_ARTIFACTS_DIR/browser``
(default ``.artifacts/browser`` in the repository; git-ignored); ``docs/demo.png`` is one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.mnist import one_per_digit
from tests.support.procs import REPO_ROOT, ServiceProcess
from tests.support.stack import free_port_config, service_processes, start_platform
from triserve_common.manifest import read_manifest

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"
]
BACKENDS = ("onnx", "paddle", "torchserve")
UPLOADED_DIGITS = (2, 4, 7, 9)
TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Digit:
    label: int
    pixels: np.ndarray
    png: bytes


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("TRISERVE_ARTIFACTS_DIR", REPO_ROOT / ".artifacts"))
    out = root / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def held_out(mnist_dir: Path, model_store: Path) -> dict[int, Digit]:
    """The most typical image of some digits among the test images the model never trained on."""
    digits = one_per_digit(mnist_dir, read_manifest(model_store / "mnist" / "1"))
    return {d: Digit(d, digits.images[d], digits.pngs[d]) for d in UPLOADED_DIGITS}


@pytest.fixture(scope="module")
def gateway(service_logs: Path, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = free_port_config(tmp_path_factory.mktemp("demo-run"), model_store)
    procs: dict[str, ServiceProcess] = service_processes(
        config, service_logs, extra_env={"gateway": {"TRISERVE_GATEWAY_STRATEGY": "round-robin"}}
    )
    try:
        start_platform(config, procs)
        yield config.url(config.gateway_port)
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Demo:
    """An open demo page and what it did: every request URL, console errors, uncaught exceptions."""

    page: Page
    gateway: str
    requests: list[str]
    errors: list[str]
    classified: int = 0

    def wait_classified(self) -> None:
        self.classified += 1
        self.page.wait_for_selector(f"body[data-classified='{self.classified}']", timeout=TIMEOUT_MS)

    def upload(self, name: str, content: bytes, mime: str = "image/png") -> None:
        self.page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": content}])
        self.wait_classified()

    def tops(self) -> dict[str, str | None]:
        return {c.get_attribute("data-backend") or "?": c.get_attribute("data-top1")
                for c in self.page.query_selector_all(".col")}

    def canvas_pixels(self, selector: str) -> np.ndarray:
        """RGBA pixels of a canvas, ``[H, W, 4]`` uint8."""
        data: dict[str, Any] = self.page.evaluate(
            """(sel) => { const c = document.querySelector(sel);
                          const d = c.getContext("2d").getImageData(0, 0, c.width, c.height);
                          return {w: c.width, h: c.height, data: Array.from(d.data)}; }""",
            selector,
        )
        return np.asarray(data["data"], np.uint8).reshape(data["h"], data["w"], 4)


def open_demo(browser: Browser, gateway: str, **context: Any) -> Demo:
    page = browser.new_context(**context).new_page()
    demo = Demo(page, gateway, [], [])
    page.on("request", lambda r: demo.requests.append(r.url))
    page.on("pageerror", lambda e: demo.errors.append(str(e)))
    page.goto(f"{gateway}/?model=mnist")  # the store has several models; these tests draw digits
    page.wait_for_selector("body[data-ready='true']", timeout=TIMEOUT_MS)
    return demo


@pytest.fixture
def demo(browser: Browser, gateway: str) -> Iterator[Demo]:
    d = open_demo(browser, gateway, viewport={"width": 1200, "height": 900})
    yield d
    assert d.errors == [], d.errors  # no uncaught JavaScript error
    outside = [u for u in d.requests if not u.startswith((gateway + "/", "data:", "blob:"))]
    assert outside == []  # nothing but the gateway is ever contacted
    d.page.context.close()


def test_page_lists_models_and_backends_from_the_gateway(demo: Demo) -> None:
    page = demo.page
    assert page.url == f"{demo.gateway}/demo/?model=mnist"
    models = httpx.get(f"{demo.gateway}/demo/models").json()["models"]
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert options == [m["modelName"] for m in models] and "mnist" in options
    (mnist,) = [m for m in models if m["modelName"] == "mnist"]
    versions = mnist["versions"]
    assert all("url" not in b and "last_error" not in b for b in mnist["backends"])  # on management only
    assert page.eval_on_selector_all("#version option", "os => os.map(o => o.value)") == versions
    columns = page.eval_on_selector_all(".col", "cs => cs.map(c => c.dataset.backend)")
    assert sorted(columns) == sorted([*BACKENDS, "auto"])


def test_uploaded_test_digits_top1_of_every_backend(
    demo: Demo, held_out: dict[int, Digit], artifacts: Path
) -> None:
    page = demo.page
    for digit in held_out.values():
        demo.upload(f"{digit.label}.png", digit.png)
        tops = demo.tops()
        assert tops == {name: str(digit.label) for name in [*BACKENDS, "auto"]}, tops
        for name in BACKENDS:
            col = page.locator(f".col[data-backend='{name}']")
            assert col.locator("li").count() == 5
            assert col.locator("li .label").first.inner_text() == str(digit.label)
            assert "gateway" in col.locator(".lat").inner_text() and " ms" in col.locator(".lat").inner_text()
            assert col.get_attribute("data-agrees") == "yes"
        auto = page.locator(".col[data-backend='auto']")
        assert auto.get_attribute("data-served-by") in BACKENDS
        assert page.locator("#agreement").inner_text() == f"All 3 backends agree: {digit.label}."
        # the 28x28 the model received is the uploaded image itself (already 28x28 grayscale)
        seen = demo.canvas_pixels("#input28")
        assert seen.shape == (28, 28, 4)
        assert np.abs(seen[:, :, 0].astype(int) - digit.pixels.astype(int)).max() <= 1
    page.screenshot(path=str(artifacts / "demo-upload.png"), full_page=True)


def test_drawn_stroke_gets_an_answer(demo: Demo, artifacts: Path) -> None:
    page = demo.page
    box = page.locator("#pad").bounding_box()
    assert box is not None
    x = box["x"] + box["width"] * 0.5
    page.mouse.move(x, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x - i * 0.4, box["y"] + box["height"] * (0.2 + 0.6 * i / 20))
    page.mouse.up()
    demo.wait_classified()  # lifting the pen classifies the drawing
    tops = demo.tops()
    assert tops == {name: "1" for name in [*BACKENDS, "auto"]}, tops  # a vertical stroke is a 1
    assert demo.canvas_pixels("#input28")[:, :, 0].max() > 200  # the stroke reached the model's input
    page.screenshot(path=str(artifacts / "demo-drawn.png"), full_page=True)


def test_non_image_shows_the_gateway_message(demo: Demo, artifacts: Path) -> None:
    page = demo.page
    body = b"this is a text file, not an image"
    expected = httpx.put(f"{demo.gateway}/predictions/mnist/1?topk=5", content=body).json()["message"]
    demo.upload("notes.txt", body, mime="text/plain")
    error = page.locator("#error")
    assert error.is_visible()
    assert expected in error.inner_text() and error.inner_text().startswith("415")
    for name in BACKENDS:
        col = page.locator(f".col[data-backend='{name}']")
        assert col.get_attribute("data-state") == "error"
        assert expected in col.locator(".err").inner_text()
    page.screenshot(path=str(artifacts / "demo-error.png"), full_page=True)


def test_explanation_heat_map(demo: Demo, held_out: dict[int, Digit], artifacts: Path) -> None:
    page = demo.page
    digit = held_out[7]
    demo.upload("7.png", digit.png)
    page.select_option("#steps", "16")
    page.click("#explain")
    page.wait_for_selector("#heat[data-drawn='true']", timeout=TIMEOUT_MS)
    info = page.locator("#explain-info").inner_text()
    assert "Integrated Gradients, 16 steps, class 7" in info and "torchserve" in info
    heat = demo.canvas_pixels("#heat")
    alpha = heat[:, :, 3]
    ink = digit.pixels > 0
    assert (alpha > 0).sum() >= 20  # a heat map is drawn...
    assert not np.any(alpha[~ink] > 8)  # ...on the digit's ink only: IG is 0 where input = baseline
    page.screenshot(path=str(artifacts / "demo.png"), full_page=True)


def test_keyboard_only(demo: Demo) -> None:
    page = demo.page
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id || document.activeElement.dataset.sample || ''"))
    assert {"model", "pad", "classify", "clear", "file", "steps", "show-heat", "3"} <= reached, reached
    page.focus("[data-sample='3']")
    page.keyboard.press("Enter")
    demo.wait_classified()
    assert set(demo.tops().values()) == {"3"}
    # draw with the keyboard on the pad: clear, pen down, move down, pen up, classify
    page.focus("#pad")
    for key in ["Delete", "ArrowUp", "ArrowUp", "ArrowUp", "ArrowUp", " ", *["ArrowDown"] * 10, " ", "Enter"]:
        page.keyboard.press(key)
    demo.wait_classified()
    tops = demo.tops()
    assert all(tops[name] for name in BACKENDS), tops  # every backend answered the keyboard drawing
    assert page.get_attribute("#agreement", "data-agree") == "yes"


def test_phone_viewport(browser: Browser, gateway: str, held_out: dict[int, Digit], artifacts: Path) -> None:
    demo = open_demo(browser, gateway, viewport={"width": 390, "height": 844}, has_touch=True,
                     is_mobile=True, device_scale_factor=2)
    try:
        demo.upload("4.png", held_out[4].png)
        assert set(demo.tops().values()) == {"4"}
        width = demo.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"horizontal scrolling on a phone: {width}"
        for selector in ("#pad", "#file", "#explain", ".col[data-backend='torchserve']"):
            box = demo.page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
        demo.page.screenshot(path=str(artifacts / "demo-phone.png"), full_page=True)
        assert demo.errors == []
    finally:
        demo.page.context.close()
