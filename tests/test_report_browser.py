"""The rendered report in a real browser: headless Chromium via selenium.

Asserts no SEVERE console errors, every plot drawn with data, no network fetches, the malicious
deployment name never executed (no alert), and a screenshot that is not blank. The screenshot is
written under pytest's tmp_path (and copied to $INFER_BENCH_SCREENSHOT_DIR when that is set).

Needs: apt-get install -y chromium chromium-driver; pip install selenium.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from report_fixtures import make_results_dir
from infer_bench.reports.html import render_compare, render_report

CHROMIUM = os.environ.get("INFER_BENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("INFER_BENCH_CHROMEDRIVER", "/usr/bin/chromedriver")

pytestmark = pytest.mark.browser

try:
    import selenium  # noqa: F401
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    _SELENIUM = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    _SELENIUM = f"selenium not installed ({exc}); pip install selenium"


def _skip_reason() -> str | None:
    if _SELENIUM:
        return _SELENIUM
    for p, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(p).exists() and os.access(p, os.X_OK)):
            return f"{p} not found (apt-get install -y {pkg})"
    return None


@pytest.fixture(scope="module")
def driver():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="infer-bench-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--window-size=1400,1000", "--force-device-scale-factor=1",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    except Exception as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"headless chromium did not start: {type(exc).__name__}: {exc}")
    drv.set_page_load_timeout(120)
    drv.set_script_timeout(60)
    # record any alert() instead of blocking on it; runs before each page's own scripts
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__alerts = [];"
        "window.alert = function (m) { window.__alerts.push(String(m)); };"
        "window.confirm = window.alert; window.prompt = window.alert;")})
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, html: Path) -> None:
    driver.set_window_size(1400, 1000)
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(html.resolve().as_uri())
    n_blocks = driver.execute_script(
        "return document.querySelectorAll('script.fig-data').length;")
    assert n_blocks >= 1
    WebDriverWait(driver, 90).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && "
        "document.querySelectorAll('.js-plotly-plot').length;") == n_blocks)


PLOT_STATE_JS = r"""
function len(a) {
  if (a === undefined || a === null) return 0;
  if (typeof a.length === 'number') return a.length;
  return 0;
}
return Array.prototype.map.call(document.querySelectorAll('.js-plotly-plot'), function (gd) {
  var full = gd._fullData || [];
  var withData = 0, visibleWithData = 0;
  for (var i = 0; i < full.length; i++) {
    var t = full[i];
    var n = Math.max(len(t.x), len(t.y));
    if (n > 0) { withData++; if (t.visible === true) visibleWithData++; }
  }
  return {id: gd.id, data: (gd.data || []).length, withData: withData,
          visibleWithData: visibleWithData,
          drawn: gd.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length};
});
"""

COUNT_COLORS_JS = r"""
var done = arguments[arguments.length - 1];
var img = new Image();
img.onload = function () {
  var c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  var ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  var d = ctx.getImageData(0, 0, c.width, c.height).data;
  var counts = {}, n = 0, top = 0;
  var step = Math.max(1, Math.floor(Math.sqrt(c.width * c.height / 250000)));
  for (var y = 0; y < c.height; y += step) {
    for (var x = 0; x < c.width; x += step) {
      var o = (y * c.width + x) * 4;
      var k = (d[o] << 16) | (d[o + 1] << 8) | d[o + 2];
      counts[k] = (counts[k] || 0) + 1; n++;
      if (counts[k] > top) top = counts[k];
    }
  }
  done({distinct: Object.keys(counts).length, topShare: top / n, w: c.width, h: c.height});
};
img.onerror = function () { done({error: 'image did not decode'}); };
img.src = 'data:image/png;base64,' + arguments[0];
"""


def _check_page(driver, tmp_path: Path, shot_name: str) -> None:
    plots = driver.execute_script(PLOT_STATE_JS)
    assert plots, "no plotly plots on the page"
    for p in plots:
        assert p["data"] >= 1 and p["withData"] >= 1, p
        assert p["visibleWithData"] >= 1 and p["drawn"] >= 1, p
    assert driver.execute_script("return window.__alerts;") == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    # nothing fetched from anywhere but the file itself
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; });")
    assert all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe
    # full-page screenshot
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, min(int(height) + 40, 16000))
    driver.execute_script("window.dispatchEvent(new Event('resize'));")
    driver.implicitly_wait(0)
    import time
    time.sleep(1.0)
    png = tmp_path / shot_name
    driver.save_screenshot(str(png))
    assert png.stat().st_size > 20_000
    b64 = driver.get_screenshot_as_base64()
    stats = driver.execute_async_script(COUNT_COLORS_JS, b64)
    assert "error" not in stats, stats
    assert stats["distinct"] > 50 and stats["topShare"] < 0.97, stats
    out = os.environ.get("INFER_BENCH_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(out) / shot_name)


def test_report_in_headless_chromium(driver, tmp_path):
    # engine (mono, with speculative decoding), external (<script> name, no server timing) and
    # disagg (transfer / admission timing) deployments; token steps with co-batched prefill;
    # steps.jsonl (predicted vs measured); a <script> request id and error message
    d = make_results_dir(tmp_path / "run", n_deployments=3, n_load_points=2, n_requests=20,
                         with_telemetry=True)
    html = render_report(d)
    _open(driver, html)
    title = driver.title
    assert "<script>" not in title and "infer-bench report" in title
    ids = set(driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('.js-plotly-plot'),"
        " function (g) { return g.id; });"))
    assert {"plot-cdf", "plot-ttft_parts", "plot-itl_time", "plot-itl_interference", "plot-spec",
            "plot-predicted", "plot-telemetry"} <= ids, ids
    # only our own scripts exist: no injected element from a record string
    assert driver.execute_script("return document.querySelectorAll('img').length;") == 0
    assert driver.execute_script("return document.scripts.length;") == 2 + len(ids)
    _check_page(driver, tmp_path, "report.png")
    # switching the load-point menu redraws without errors
    driver.execute_script("""
        var gd = document.getElementById('plot-cdf');
        var menu = gd.layout.updatemenus[0];
        Plotly.update(gd, menu.buttons[0].args[0]);""")
    assert [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"] == []


def test_incomplete_single_load_point_in_browser(driver, tmp_path):
    d = make_results_dir(tmp_path / "inc", n_deployments=1, n_load_points=1, n_requests=10,
                         status="incomplete", with_steps=False)
    _open(driver, render_report(d))
    assert driver.find_element("id", "incomplete-warning").is_displayed()
    _check_page(driver, tmp_path, "incomplete.png")


def test_compare_in_headless_chromium(driver, tmp_path):
    # two repeats of each configuration: deltas with t-intervals
    dirs = [make_results_dir(tmp_path / f"{g}{i}", n_deployments=2, n_load_points=2,
                             n_requests=10, seed=3 * i + (g == "b"), name=g)
            for g in "ab" for i in range(2)]
    _open(driver, render_compare(dirs, tmp_path / "cmp.html"))
    assert driver.find_element("id", "deltas").is_displayed()
    assert "CI [" in driver.find_element("id", "deltas").text
    _check_page(driver, tmp_path, "compare.png")
