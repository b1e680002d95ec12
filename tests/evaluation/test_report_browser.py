"""report.html in headless Chromium, read as an inspector reads it: the random-weights banner and the summary card
first, captions that tell same-named inputs apart, the colour bar with its threshold, one card per video event,
missed defects and false alarms, errors grouped by reason without object reprs, readable metrics before the raw
table (whose numbers are evaluation.json's)."""

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.results import heatmap_key
from pipeline.results import sink as sinks
from tests.helpers.evaluation_runs import evaluate, sinks_storage, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# run in the page after load: what an inspector sees, written into the DOM that --dump-dom prints
PROBE = """<script>window.addEventListener('load', () => {
  const text = el => el ? el.textContent.replace(/\\s+/g, ' ').trim() : null;
  const all = [...document.querySelectorAll('*')];
  const at = sel => all.indexOf(document.querySelector(sel));
  const lines = el => el.innerText.trim().replace(/\\s*\\n\\s*/g, ' | ');
  const captions = sel => [...document.querySelectorAll(sel + ' figcaption')].map(lines);
  const imgs = [...document.images];
  const cells = {};
  document.querySelectorAll('#metrics td[data-key]').forEach(td => cells[td.dataset.key] = td.textContent);
  const ramp = document.querySelector('#colour-bar .ramp').getBoundingClientRect();
  const tick = document.querySelector('#colour-bar .tick-line').getBoundingClientRect();
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    n: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt), cells,
    banner: text(document.getElementById('random-weights')),
    summary: Object.fromEntries([...document.querySelectorAll('#summary [data-field]')]
      .map(d => [d.dataset.field, lines(d.querySelector('dd'))])),
    gallery: captions('#gallery'), events: captions('#video-events'), missed: captions('#missed'),
    falseAlarms: captions('#false-alarms'),
    errors: Object.fromEntries([...document.querySelectorAll('#errors [data-reason]')]
      .map(d => [d.dataset.reason, {count: text(d.querySelector('.count')), items: [...d.querySelectorAll('li')]
      .map(text)}])),
    bar: {ticks: [...document.querySelectorAll('#colour-bar .ticks span')].map(text),
          mark: text(document.querySelector('#colour-bar .threshold-mark')),
          markAt: (tick.left + tick.width / 2 - ramp.left) / ramp.width, width: ramp.width,
          gradient: getComputedStyle(document.querySelector('#colour-bar .ramp')).backgroundImage},
    order: {title: at('h1'), banner: at('#random-weights'), summary: at('#summary'), gallery: at('#gallery'),
            readable: at('#metric-summary'), raw: at('#metrics')},
    body: document.body.innerText});
  document.body.appendChild(out);
});</script>"""
RANDOM = "the resnet18 backbone of bank /banks/v0001 (patchcore.weights=none)"


def add_rows(dataset, run):
    """Beside write_run's rows: a tar copy of a loose defect image and undecodable files (with object reprs)."""
    heat = run / "heatmaps" / "u0" / f"{heatmap_key(f'{dataset}/test/defect/0001.png', None, None)}.png"
    tar = f"{dataset}/test/shard-0000.tar"
    rows = [{"run_id": "run", "unit_id": "u1", "source_uri": tar, "member": "defect/0001.png", "member_index": 1,
             "width": 96, "height": 96, "score": 0.95, "is_anomaly": True, "threshold": 0.5,
             "heatmap_uri": str(heat), "status": "ok"}]
    for i, (name, error) in enumerate([
            ("a.jpg", "not a decodable image: UnidentifiedImageError: cannot identify image file "
                      "<_io.BytesIO object at 0x7f52813b09a0>"),
            ("b.jpg", "not a decodable image: UnidentifiedImageError: cannot identify image file "
                      "<_io.BytesIO object at 0x7f5281aa1f30>"),
            ("c.png", "corrupt or truncated image: OSError: image file is truncated")]):
        rows.append({"run_id": "run", "unit_id": "u1", "source_uri": f"{dataset}/test/broken/{name}",
                     "member_index": i, "status": "error", "error": error})
    sinks.write_part(sinks_storage(), str(run / "scores" / "part-u1.parquet"), rows)


def probe(page, tmp_path) -> dict:
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1600"]
    dom = subprocess.run([*common, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"')
                       .replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", probed.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium; .ci/run does)")
def test_report_reads_as_an_inspector_needs_in_chromium(dataset, tmp_path):
    # defects 0000-0003 score 0.2 0.9 0.6 0.4, normals 0.3 0.7 0.35 0.45; threshold 0.5
    run = write_run(dataset, tmp_path, scores=[0.2, 0.9, 0.6, 0.4, 0.3, 0.7, 0.35, 0.45])
    add_rows(dataset, run)
    (run / "summary.json").write_text(json.dumps({
        "input": "test", "input_uri": f"{dataset}/test", "detector": "patchcore", "model_version": "v0001:sha256:0123",
        "random_weights": [RANDOM], "inspected_fraction": 0.875, "inspected_area_fraction": 0.765625}))
    frames = tmp_path / "frames.csv"
    frames.write_text("source,frame_index,label\n" + "".join(f"cam1.mp4,{f},{int(3 <= f <= 5)}\n" for f in range(10)))
    code, result = evaluate(run, str(dataset), str(frames))
    assert code == 0
    page = (run / "evaluation" / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # self-contained: nothing fetched
    assert "object at 0x" not in page
    found = probe(page, tmp_path)
    assert found["broken"] == []

    # the banner and the summary card come first
    order = found["order"]
    assert order["title"] < order["banner"] < order["summary"] < order["gallery"] < order["readable"] < order["raw"]
    assert "Random weights" in found["banner"] and RANDOM in found["banner"]
    assert result["random_weights"] == [RANDOM]
    card = found["summary"]
    assert card["inputs"] == "23 | 9 images, 10 video frames of 1 video"  # and 4 not scored
    assert card["flagged"] == "4 | 4 images, 2 video events"  # 0.9 0.6 0.7 0.95; videos.json's segments
    assert card["errors"].startswith("4 |") and card["threshold"].startswith("0.5 |")
    assert card["inspected"].startswith("76.6 % of the area |") and "6.25 % of every edge" in card["inspected"]
    assert card["image_auroc"] == f"{result['image_auroc']:.3f}" and card["frame_auc"] == f"{result['frame_auc']:.3f}"
    assert card["missed"] == "2 | of 5 defective" and card["false_alarms"] == "1 | of 4 normal"

    # captions name path, tar member and score: same-named files and a loose file and its tar copy stay apart
    gallery = found["gallery"]
    assert len(gallery) == 9 and len(set(gallery)) == 9
    assert gallery[0].startswith("0.9500 flagged | shard-0000.tar | tar member defect/0001.png | labelled defect")
    assert gallery[1].startswith("0.9000 flagged | defect/0001.png | labelled defect")
    assert "0.2000 | defect/0000.png | labelled defect (defect) | green: the labelled defect" in gallery
    assert "0.3000 | good/0000.png | labelled normal (good)" in gallery

    # thumbnails frame the part the model inspected (the centred 87.5 % of each side): a dashed white line
    thumb = Image.open(io.BytesIO(base64.b64decode(re.search(
        r'id="gallery"><figure class="card"><img src="data:image/png;base64,([^"]+)"', page).group(1)))).convert("RGB")
    edge = round(thumb.width * 0.0625)
    top = np.asarray(thumb)[edge, edge:thumb.width - edge]
    assert 0.3 < (top == 255).all(axis=1).mean() < 0.9  # dashed: white with gaps
    assert not (np.asarray(thumb)[edge - 2] == 255).all(axis=1).any()  # outside it, the heatmap as drawn

    # the colour bar: a gradient, 0 to twice the threshold, the threshold marked in the middle
    bar = found["bar"]
    assert "linear-gradient" in bar["gradient"] and bar["width"] > 100
    assert bar["ticks"] == ["0", "threshold 0.5", "1 and above"] and bar["mark"] == "threshold 0.5"
    assert bar["markAt"] == pytest.approx(0.5, abs=0.02)

    # one card per video event (frames 4-6 are three flagged frames: one card), with its span
    first, second = found["events"]
    assert first.startswith("1.0000 | /cam/cam1.mp4 | frame 4 · 0.40 s | event: frames 4–6, 3 scored frames")
    assert second.startswith("0.0000 | /cam/cam1.mp4 | frame 9 · 0.90 s | event: frames 9–9, 1 scored frame")
    assert first.endswith("on a labelled event") and second.endswith("no labelled event here")
    # missed defects and false alarms, with their pictures
    assert [c.split(" | ")[:2] for c in found["missed"]] == [["0.2000", "defect/0000.png"],
                                                              ["0.4000", "defect/0003.png"]]
    assert [c.split(" | ")[:2] for c in found["falseAlarms"]] == [["0.7000 flagged", "good/0001.png"]]

    # errors grouped by reason, their texts free of object reprs
    errors = found["errors"]
    assert {k: v["count"] for k, v in errors.items()} == {"not a decodable image": "2",
                                                           "corrupt or truncated image": "1", "bad": "1"}
    assert errors["not a decodable image"]["items"] == [
        "broken/a.jpg — UnidentifiedImageError: cannot identify image file",
        "broken/b.jpg — UnidentifiedImageError: cannot identify image file"]
    assert "object at 0x" not in found["body"]

    # the raw table still shows evaluation.json's numbers
    assert found["n"] == 9 + 2 + 1 + 2 + 1  # gallery, missed, false alarm, histogram and ROC/PR, the video's curve
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro", "frame_auc"):
        assert float(found["cells"][key]) == pytest.approx(result[key], abs=5e-5), key

    # a run whose models all had real weights has no banner
    (run / "summary.json").write_text(json.dumps({"input": f"{dataset}/test", "random_weights": []}))
    assert evaluate(run, str(dataset), str(frames))[0] == 0
    assert 'id="random-weights"' not in (run / "evaluation" / "report.html").read_text()
