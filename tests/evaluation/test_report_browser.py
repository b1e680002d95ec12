"""report.html in headless Chromium: every image decodes, and the metric table shows evaluation.json's numbers."""

import json
import re
import shutil
import subprocess

import pytest

from tests.helpers.evaluation_runs import evaluate, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# run in the page after load: broken images and the table's cells, written into the DOM that --dump-dom prints
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const cells = {};
  document.querySelectorAll('#metrics td[data-key]').forEach(td => cells[td.dataset.key] = td.textContent);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({n: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => i.alt), cells});
  document.body.appendChild(out);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium; .ci/run does)")
def test_report_renders_in_chromium(dataset, tmp_path):
    run = write_run(dataset, tmp_path, scores=[0.2, 0.9, 0.6, 0.4, 0.3, 0.7, 0.35, 0.45])
    frames = tmp_path / "frames.csv"
    frames.write_text("source,frame_index,label\n" + "".join(f"cam1.mp4,{f},{int(3 <= f <= 5)}\n" for f in range(10)))
    code, result = evaluate(run, str(dataset), str(frames))
    assert code == 0
    report = (run / "evaluation" / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", report)  # self-contained: nothing fetched
    probed = tmp_path / "probed.html"
    probed.write_text(report.replace("</body>", PROBE + "</body>"))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert found["n"] >= 8 + 2 + 1  # gallery cards, histogram + ROC/PR, the video curve
    assert found["broken"] == []
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro", "frame_auc"):
        assert float(found["cells"][key]) == pytest.approx(result[key], abs=5e-5), key
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,1600", probed.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
