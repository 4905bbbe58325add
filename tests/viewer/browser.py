"""OHIF in Debian's Chromium, driven by Playwright for Python (no browser download).

:class:`Ohif` opens a study, loads a SEG or SR from the study panel, and reads back what a user
sees: the segment list with its colours, the viewport's pixels, the measurements, every console
error and every failed HTTP request.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Headless Chromium has no GPU: OHIF's viewport needs software WebGL (SwiftShader).
CHROMIUM_ARGS = ["--no-sandbox", "--ignore-gpu-blocklist", "--enable-unsafe-swiftshader",
                 "--use-angle=swiftshader", "--disable-dev-shm-usage"]
#: Console errors that are not about our objects: Chromium's own notes on software WebGL.
BENIGN_CONSOLE = (re.compile(r"GPU stall due to ReadPixels"),
                  re.compile(r"Automatic fallback to software WebGL"))


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (the Debian package) for the whole block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Segment:
    number: int
    label: str
    rgb: tuple[int, int, int]


@dataclass
class Ohif:
    """One browser page on the viewer at ``base_url``."""

    browser: Any
    base_url: str
    artefacts: Path
    page: Any = None
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    opened_at: float = 0.0

    def __post_init__(self) -> None:
        self.artefacts.mkdir(parents=True, exist_ok=True)
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"pageerror: {exc}"))
        self.page.on("requestfailed",
                     lambda r: self.failed_requests.append(f"{r.url} ({r.failure})"))
        self.page.on("response", lambda r: self.failed_requests.append(f"{r.status} {r.url}")
                     if r.status >= 400 else None)

    def _on_console(self, message: Any) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in BENIGN_CONSOLE):
            self.console_errors.append(message.text[:2000])

    def close(self) -> None:
        self.page.close()

    def screenshot(self, name: str) -> Path:
        path = self.artefacts / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    # -- opening --------------------------------------------------------------------------

    def open_study(self, study_uid: str, timeout: float = 120) -> float:
        """Open the study; return seconds from navigation to the first image drawn."""
        self.opened_at = time.monotonic()
        self.page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}")
        self.page.wait_for_function(
            "() => { const e = window.cornerstone && window.cornerstone.getEnabledElements();"
            " return e && e.length > 0 && e[0].viewport && !!e[0].viewport.getCurrentImageId()"
            " && e[0].viewport.getDefaultActor && !!e[0].viewport.getDefaultActor(); }",
            timeout=timeout * 1000)
        first_image = time.monotonic() - self.opened_at
        self._skip_tour()
        return first_image

    def _skip_tour(self) -> None:
        # The first-visit tour ("Scrolling Through Images 1/11") covers the toolbar.
        skip = self.page.get_by_text("Skip all")
        try:
            skip.first.wait_for(timeout=3000)
            skip.first.click()
        except Exception:  # noqa: BLE001 - no tour shown: nothing to skip
            pass

    def series_item(self, modality: str, description: str | None = None) -> Any:
        """The study panel's entry of a series without thumbnail (SEG, SR) of ``modality``."""
        label = self.page.locator('[data-cy="series-modality-label"]',
                                  has_text=re.compile(f"^{modality}$"))
        items = self.page.locator('[data-cy="study-browser-thumbnail-no-image"]').filter(has=label)
        if description:
            items = items.filter(has_text=description)
        return items

    def load(self, modality: str, description: str | None = None, *, hydrate: bool = True,
             timeout: float = 120) -> None:
        """Double-click the SEG/SR entry and answer OHIF's hydration prompt: yes for a SEG
        (its segments become editable and are listed), no for an SR (hydrating takes the
        report out of its SR viewport, where OHIF draws it)."""
        items = self.series_item(modality, description)
        items.first.wait_for(timeout=timeout * 1000)
        assert items.count() == 1, f"{items.count()} {modality} entries match {description!r}"
        items.first.dblclick()
        answer = self.page.locator(f'[data-cy="{"yes" if hydrate else "no"}-hydrate-btn"]')
        answer.wait_for(timeout=timeout * 1000)
        answer.click()

    def annotations(self) -> list[dict[str, Any]]:
        """cornerstone's annotations (an SR's measurements): tool, graphic type, image, and the
        text lines OHIF shows next to each."""
        found: list[dict[str, Any]] = self.page.evaluate("""() =>
            window.cornerstoneTools.annotation.state.getAllAnnotations().map(a => ({
              tool: a.metadata.toolName, graphicType: a.metadata.graphicType || null,
              image: a.metadata.referencedImageId || null,
              labels: (a.data.labels || []).map(l => `${l.label}: ${l.value}`)}))""")
        return found

    def svg_text(self) -> list[str]:
        """Text drawn over the viewport (annotation text boxes)."""
        texts: list[str] = self.page.evaluate("""() => [...document.querySelectorAll(
            '[data-cy="viewport-pane"] svg text, [data-cy="viewport-pane"] svg tspan')]
            .map(t => t.textContent).filter(Boolean)""")
        return texts

    # -- SEG ------------------------------------------------------------------------------

    def open_segment_panel(self) -> None:
        if not self.page.locator('[data-cy="data-row"]').count():
            self.page.locator('[data-cy="panelSegmentation-btn"]').click()

    def wait_for_segments(self, count: int, timeout: float = 120) -> list[Segment]:
        self.open_segment_panel()
        self.page.wait_for_function(
            f"() => document.querySelectorAll('[data-cy=\"data-row\"]').length >= {count}",
            timeout=timeout * 1000)
        return self.segments()

    def segments(self) -> list[Segment]:
        """The segmentation panel's rows: number, label and the colour of its swatch."""
        rows = self.page.evaluate("""() => [...document.querySelectorAll('[data-cy="data-row"]')]
            .map(r => ({number: r.children[1] ? r.children[1].textContent : '',
                        label: r.querySelector('[data-cy="data-row-title"]').textContent,
                        color: getComputedStyle(
                          r.querySelector('[data-cy="data-row-colorhex"]')).backgroundColor}))""")
        out = []
        for row in rows:
            rgb = tuple(int(v) for v in re.findall(r"\d+", row["color"])[:3])
            number = int(row["number"]) if row["number"].strip().isdigit() else 0
            out.append(Segment(number, row["label"].strip(), rgb))  # type: ignore[arg-type]
        return out

    def wait_for_labelmap(self, timeout: float = 120) -> float:
        """Wait until the viewport holds a segmentation representation; seconds since open."""
        self.page.wait_for_function(
            "() => { const s = window.services && window.services.segmentationService;"
            " return s && s.getSegmentations().length > 0 &&"
            " window.cornerstone.getEnabledElements()[0].viewport &&"
            " window.cornerstoneTools.segmentation.state.getSegmentationRepresentations("
            "   window.cornerstone.getEnabledElements()[0].viewport.id).length > 0; }",
            timeout=timeout * 1000)
        return time.monotonic() - self.opened_at

    def solid_segments(self) -> None:
        """Draw segmentations opaque and without outline: every overlay pixel is then exactly
        its segment's colour."""
        self.page.evaluate("""() => window.cornerstoneTools.segmentation.segmentationStyle
            .setStyle({type: 'Labelmap'}, {renderOutline: false, renderOutlineInactive: false,
                       renderFill: true, renderFillInactive: true, fillAlpha: 1,
                       fillAlphaInactive: 1})""")

    # -- the viewport ---------------------------------------------------------------------

    def viewport_info(self) -> dict[str, Any]:
        """The active viewport's current image, slice index, slice count and canvas box."""
        info: dict[str, Any] = self.page.evaluate("""() => {
            const vp = window.cornerstone.getEnabledElements()[0].viewport;
            const box = vp.canvas.getBoundingClientRect();
            return {imageId: vp.getCurrentImageId(), index: vp.getCurrentImageIdIndex(),
                    count: vp.getImageIds().length,
                    box: [box.left, box.top, box.width, box.height]}; }""")
        return info

    def go_to_slice(self, index: int) -> dict[str, Any]:
        self.page.evaluate(f"""async () => {{
            const vp = window.cornerstone.getEnabledElements()[0].viewport;
            await vp.setImageIdIndex({index}); vp.render(); }}""")
        self.page.wait_for_function(
            f"() => window.cornerstone.getEnabledElements()[0].viewport"
            f".getCurrentImageIdIndex() === {index}")
        self.page.wait_for_timeout(1500)  # let the labelmap layer render
        return self.viewport_info()

    def go_to_sop(self, sop_instance_uid: str) -> dict[str, Any]:
        ids: list[str] = self.page.evaluate(
            "() => window.cornerstone.getEnabledElements()[0].viewport.getImageIds()")
        matches = [i for i, image_id in enumerate(ids)
                   if f"/instances/{sop_instance_uid}/" in image_id]
        assert matches, f"{sop_instance_uid} is not among the viewport's images"
        return self.go_to_slice(matches[0])

    def look_at(self, point: list[float], step: list[float], min_pixels: float = 6.0) -> None:
        """Centre the viewport on patient ``point`` and zoom in until one ``step`` (a pixel's
        extent, mm) spans at least ``min_pixels`` screen pixels, so that each SEG pixel is
        several screen pixels wide and sampling its centre cannot hit a neighbour."""
        self.page.evaluate("""([point, step, minPixels]) => {
            const vp = window.cornerstone.getEnabledElements()[0].viewport;
            const cam = vp.getCamera();
            const d = [0, 1, 2].map(i => point[i] - cam.focalPoint[i]);
            const n = cam.viewPlaneNormal;
            const along = d[0] * n[0] + d[1] * n[1] + d[2] * n[2];
            const shift = d.map((v, i) => v - along * n[i]);  // stay on the current image
            vp.setCamera({focalPoint: cam.focalPoint.map((v, i) => v + shift[i]),
                          position: cam.position.map((v, i) => v + shift[i])});
            const a = vp.worldToCanvas(point);
            const b = vp.worldToCanvas(point.map((v, i) => v + step[i]));
            const pitch = Math.hypot(b[0] - a[0], b[1] - a[1]);
            if (pitch < minPixels) vp.setZoom(vp.getZoom() * minPixels / pitch);
            vp.render(); }""", [point, step, min_pixels])
        self.page.wait_for_timeout(1000)

    def world_to_screen(self, points: list[list[float]]) -> np.ndarray:
        """Patient coordinates (mm) → page pixels, through the viewport's own camera."""
        canvas = self.page.evaluate(f"""() => {{
            const vp = window.cornerstone.getEnabledElements()[0].viewport;
            const box = vp.canvas.getBoundingClientRect();
            return {points!r}.map(p => {{ const c = vp.worldToCanvas(p);
                                          return [c[0] + box.left, c[1] + box.top]; }}); }}""")
        return np.asarray(canvas, float)

    def viewport_pixels(self, name: str) -> tuple[np.ndarray, tuple[float, float]]:
        """A screenshot of the viewport canvas (RGB array) and its top-left corner on the page."""
        info = self.viewport_info()
        left, top, width, height = info["box"]
        path = self.artefacts / f"{name}.png"
        self.page.screenshot(path=str(path), clip={"x": left, "y": top, "width": width,
                                                   "height": height})
        return np.asarray(Image.open(path).convert("RGB")), (left, top)

    # -- SR -------------------------------------------------------------------------------

    def error_boxes(self) -> list[str]:
        """Text of error notices shown in the viewport or as notifications."""
        texts: list[str] = self.page.evaluate("""() => [...document.querySelectorAll(
            '[data-cy="viewport-pane"] *, [role="alert"], [data-sonner-toast]')]
            .filter(e => /Error|error|Cannot read|TypeError/.test(e.textContent) &&
                         e.children.length === 0)
            .map(e => e.textContent.slice(0, 300))""")
        return texts

    def body_text(self) -> str:
        text: str = self.page.evaluate("() => document.body.innerText")
        return text


def colour_mask(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12
                ) -> np.ndarray:
    """Pixels within ``tolerance`` (per channel) of ``rgb``."""
    return np.all(np.abs(pixels.astype(int) - np.asarray(rgb)) <= tolerance, axis=-1)
