"""The rollback and the promotion reports as a reader sees them: opened in Debian chromium (playwright), read
back from the page the browser laid out — counts, labels, attribution, what comes after the end — and
photographed (two PNGs in the test's tmp dir). Kafka-free: the deployments are the sample's, judged by the
real judge and, for the promotion, walked up its rollout plan by the real SLO agent loop.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from canary.reports.files import write_report_html
from canary.reports.html import LEFT, RIGHT, WIDTH
from canary.reports.model import build_report
from tests.reports.sample import CANDIDATE_P95, build_promotion, build_with_aftermath

T0 = 1_700_000_000_000
VIEWPORT = {"width": 1240, "height": 900}


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run 'bash scripts/install_test_deps.sh' (CI does this first)")
    return path


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses to sandbox as root
        browser = await pw.chromium.launch(executable_path=_chromium(), headless=True, args=args)
        try:
            yield await browser.new_page(viewport=VIEWPORT)
        finally:
            await browser.close()


async def _open(page: Any, report_dir: Path, shot: Path) -> None:
    await page.goto(report_dir.joinpath("report.html").as_uri())
    png = await page.screenshot(path=str(shot), full_page=True)
    assert len(png) > 50_000, "an empty page photographs small"
    # Nothing wider than the window: long ids wrap instead of pushing the page sideways.
    assert await page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]


async def _kpi(page: Any, label: str) -> tuple[str, str]:
    card = page.locator(".kpi", has=page.locator(".label", has_text=label))
    return (await card.locator(".value").inner_text(), await card.locator(".compare").inner_text())


async def test_rollback_and_promotion_reports_read_true_in_chromium(page: Any, tmp_path: Path) -> None:
    rolled = build_with_aftermath(T0, "canary_rollback")
    promoted = build_promotion(T0 + 600_000, "canary_promotion")
    for name, sc in (("rollback", rolled), ("promotion", promoted)):
        report = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 900_000)
        write_report_html(report, tmp_path / name)

    # -- the rollback ------------------------------------------------------------------------------------
    await _open(page, tmp_path / "rollback", tmp_path / "rollback-report.png")
    banner = await page.locator(".banner").inner_text()
    assert "Rolled back to last_good." in banner and "automatic, by slo-agent" in banner
    # Three judged buckets failed, out of the ten judged until the rollback; the bucket of in-flight requests
    # after it (which the judge, judging on, found failing too) is not one of them, and the card says so.
    value, compare = await _kpi(page, "Failed candidate buckets")
    assert value == f"3 / {len(CANDIDATE_P95)}"
    assert "judged until the rollback" in compare and "1 in-flight bucket(s) after rollback not counted" in compare
    p95 = page.locator("svg.chart-p95")
    assert await p95.locator("path.series-candidate").get_attribute("data-points") == str(len(CANDIDATE_P95))
    late = p95.locator("circle.point-after-end")
    assert await late.count() == 1
    assert "in flight" in (await late.locator("title").text_content() or "")
    assert "finishing after it (not judged)" in await page.locator(".panel-p95 .sub").inner_text()
    assert "shaded: the buckets the rollback rests on" in await page.locator(".panel-p95 .sub").inner_text()
    assert await p95.locator("rect.evidence-band").count() == 2
    # The axis ends with the data: the in-flight bucket's dot sits in the last tenth of the plot.
    cx = float(await late.get_attribute("cx") or 0)
    assert cx > LEFT + 0.9 * (WIDTH - LEFT - RIGHT)
    # Verdicts after the rollback: faded, one per rule; the observed share stops at the rollback.
    assert await page.locator("svg.verdict-strip rect.verdict-after-end").count() == 3
    assert await page.locator("svg.chart-traffic circle.point-observed").count() == len(CANDIDATE_P95)
    marker = await p95.locator("g.rollback-marker text.marker-label").text_content() or ""
    assert marker.startswith("rolled back automatically — SLO violation: p95_ms failed for 2 consecutive")
    await page.locator("details summary").click()
    assert await page.locator("tr.bucket-after-end").count() == 2  # both arms of the slot the end fell in
    assert "after the rollback (in flight, not counted)" in await page.locator("tr.bucket-after-end").first.inner_text()

    # -- the promotion -----------------------------------------------------------------------------------
    await _open(page, tmp_path / "promotion", tmp_path / "promotion-report.png")
    banner = await page.locator(".banner").inner_text()
    assert "Promoted: candidate_progressive is the new last_good." in banner
    assert "automatic, by slo-agent" in banner and "rollout: step 4 of 4" in banner
    assert "manual" not in banner
    value, compare = await _kpi(page, "Failed candidate buckets")
    assert value == "0 / 13" and "judged until the promotion" in compare and "in-flight" not in compare
    subtitle = await page.locator(".panel-p95 .sub").inner_text()
    assert "rollback" not in subtitle and "shaded" not in subtitle
    assert await page.locator("svg.chart-p95 circle.point-after-end").count() == 0
    marker = await page.locator("svg.chart-p95 g.promote-marker text.marker-label").text_content() or ""
    assert marker.startswith("promoted automatically — rollout: step 4 of 4")
    rows = page.locator("table.commands tr.command")
    assert [await rows.nth(i).locator("td").nth(2).inner_text() for i in range(await rows.count())] == [
        "cli:alice",
        "slo-agent",
        "slo-agent",
        "slo-agent",
        "slo-agent",
    ]
    assert "promote" in await page.locator("table.commands tr.command-promote").inner_text()


async def test_the_result_diff_card_reads_true_in_chromium(page: Any, tmp_path: Path) -> None:
    """Issue #23: a candidate compared with last_good on the same queries — the card a reader sees."""
    import msgspec.structs

    from tests.reports.test_result_diff_display import _window

    sc = build_with_aftermath(T0, "canary_diff")
    measured = _window(0, [0.5] * 4, changed=2).stats
    windows = [msgspec.structs.replace(w, stats=measured) if w.arm == "candidate" else w for w in sc.windows]
    write_report_html(build_report(commands=sc.command_dicts, windows=windows, now_ms=T0 + 900_000), tmp_path / "diff")
    await _open(page, tmp_path / "diff", tmp_path / "diff-report.png")
    value, compare = await _kpi(page, "Candidate vs last_good top 10")
    assert value == "RBO 0.5"
    assert compare.startswith("Jaccard 1 · first result changed 50% · ") and compare.endswith("queries compared")
