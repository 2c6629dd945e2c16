"""The HTML evaluation report: model text is escaped, nothing external is loaded, a real browser renders it."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from alignkit.eval.evaluate import evaluate, load_prompts, render_html, write_html_report
from alignkit.rewards.judges import SandboxGoldJudge
from alignkit.sampling.generate import SamplingConfig

ATTACK = "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED'\"> & done"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (`make test` installs it "
                                                             "when root and apt-get are available)")
WINDOW = (1000, 800)


@pytest.fixture(scope="module")
def report_dir(tiny_world, tmp_path_factory) -> Path:
    """A real ``evaluate`` report (two models, ratings, LC, plots) whose example text carries an attack."""
    out = tmp_path_factory.mktemp("html")
    base = str(tiny_world / "base")
    prompts = load_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:8]
    report = evaluate({"<b>bold</b>": base, "other": base}, base, prompts, SandboxGoldJudge(), out_dir=out,
                      progress=False, n_bootstrap=50, sampling=SamplingConfig(max_new_tokens=8, seed=1))
    report["examples"][0]["other"] = ATTACK
    write_html_report(report, out / "eval.html", sorted(out.glob("*.png")))
    return out


def test_page_escapes_model_text_and_loads_nothing_external(report_dir):
    page = (report_dir / "eval.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "onerror=\"" not in page
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page      # model names too
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "Content-Security-Policy" in page and "Bradley-Terry ratings" in page


def test_render_html_escapes_every_field():
    report = {"judge": "<j>", "prompts": 1, "baseline": "<base>", "baseline_path": "\"><x", "reference": "r",
              "judge_mode": "pointwise", "objectives": [],
              "models": [{"model": "<base>", "kl": {"mean": 0.0}, "length": {"mean": 3.0}}],
              "examples": [{"prompt": "</pre><script>1</script>", "<base>": ATTACK}]}
    page = render_html(report)
    assert "<script" not in page.lower() and "<j>" not in page and "<base>" not in page and '"><x' not in page


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           *args], capture_output=True, text=True, timeout=120)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@needs_chromium
def test_chromium_screenshot_is_the_right_size_and_not_blank(report_dir):
    from matplotlib.image import imread

    shot = report_dir / "screenshot.png"
    _chromium("--hide-scrollbars", f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
              (report_dir / "eval.html").as_uri())
    assert shot.exists() and png_size(shot) == WINDOW
    pixels = imread(shot)[..., :3]
    not_white = (pixels < 0.9).any(axis=-1).mean()
    assert pixels.std() > 0.05 and not_white > 0.01, (pixels.std(), not_white)
    assert len(np.unique(pixels.reshape(-1, 3).round(2), axis=0)) > 20     # text, table borders, a plot


@needs_chromium
def test_chromium_does_not_run_the_script_in_model_text(report_dir, tmp_path):
    dom = _chromium("--dump-dom", (report_dir / "eval.html").as_uri()).stdout
    assert "Example 1" in dom                                                # the page did render
    assert "PWNED" not in re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom       # shown as text
    assert "<script" not in dom.lower()
    # control: the same check does see a script that really runs
    control = tmp_path / "control.html"
    control.write_text("<html><head><title>T</title></head><body><script>document.title='PWNED'</script></body>"
                       "</html>")
    assert "<title>PWNED</title>" in _chromium("--dump-dom", control.as_uri()).stdout
