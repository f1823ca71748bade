"""OHIF (as MONAI Label serves it at ``/ohif/``) in headless Chromium: open a study, show a DICOM SEG, screenshot.

Needs ``playwright`` (PyPI; only its driver is used) and a Chromium binary (Debian ``chromium``); no browser is
downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["CHROMIUM_ARGS", "screenshot_study"]

#: Headless Chromium on a machine without network: no background connections, no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _settle(page, first_wait: float = 1.0, interval: float = 1.5, timeout: float = 60.0) -> bytes:
    """A screenshot once the page stops changing (two in a row alike), so a slow machine still shows the drawn image."""
    time.sleep(first_wait)
    last = page.screenshot()
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(interval)
        shot = page.screenshot()
        if shot == last:
            return shot
        last = shot
    return last


def screenshot_study(
    server: str,
    study_uid: str,
    out: str | Path,
    show_seg: str | None = "monai_sam_adapt",
    chromium: str = "/usr/bin/chromium",
    size: tuple[int, int] = (1400, 900),
    timeout_s: float = 120.0,
) -> tuple[Path, Path | None]:
    """Open ``<server>/ohif/viewer?StudyInstanceUIDs=<study_uid>`` and save a screenshot of the first image.

    With ``show_seg``, the SEG series whose description contains it is then opened in the viewport (double-click
    on its entry, "Yes" to OHIF's question) and a second screenshot taken with the segmentation overlaid.
    Returns ``(plain, with_seg)`` paths (``out`` with suffixes ``-plain`` and ``-seg``; ``with_seg`` is ``None``
    without ``show_seg``).
    """
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plain, seg = out.with_name(out.stem + "-plain.png"), out.with_name(out.stem + "-seg.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(f"{server}/ohif/viewer?StudyInstanceUIDs={study_uid}", wait_until="networkidle")
            page.locator("canvas").first.wait_for(state="visible")
            _settle(page)  # the first image is drawn after the canvas appears
            try:  # OHIF's "investigational use" banner covers the bottom of the viewport
                page.get_by_text("Confirm and Hide").first.click(timeout=5000)
            except Exception:  # noqa: BLE001 - not shown by every OHIF build
                pass
            plain.write_bytes(_settle(page))
            if not show_seg:
                return plain, None
            page.get_by_text(show_seg).first.dblclick()
            page.get_by_role("button", name="Yes").click()
            seg.write_bytes(_settle(page, first_wait=2.0))
            return plain, seg
        finally:
            browser.close()
