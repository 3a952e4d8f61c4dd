"""The page a person reads (lusfeat.page): its content from plain data, its heat maps, what predict writes, and
the pages opened in headless Chromium (tests/browser.py; skipped, with the install command, without it)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import INSTALL, chromium, load

from lusfeat.page import HeatMap, ModelFacts, NotScored, Page, Patient, Region, Video
from lusfeat.page.render import render
from lusfeat.predict import main as predict

FACTS = ModelFacts(folder="runs/xception/final", backbone="xception", engine="openvino", precision="float32",
                   fold="final", scorer="video", fitted="2026-12-07", train_patients=63, qwk=0.236,
                   qwk_source="xception cross-validation", coverage=0.9, measured_coverage=0.878, measured_target=0.9,
                   frame_step=10)
PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="


def video(name: str, score: int, probabilities, score_set, **extra) -> Video:
    return Video(name, f"videos/{name}.mp4", score, list(probabilities), 9, True, list(score_set), **extra)


def made_up_page() -> Page:
    blue = Patient("12", [
        Region("L1", 1, [video("L1", 1, (0.44, 0.29, 0.19, 0.08), (0, 1, 2),
                               heatmaps=[HeatMap(40, 0.31, PIXEL)])], [0, 1, 2]),
        Region("R3", 3, [video("R3", 3, (0.05, 0.1, 0.25, 0.6), (2, 3), in_distribution=False,
                               warnings=["unlike the videos the model was trained on"],
                               heatmaps=[HeatMap(30, 0.0, PIXEL, upward=False)])], [2, 3]),
    ], [NotScored("videos/L2.mp4", "12", "L2", "no video stream (audio stream(s) only)")], true_global=5)
    other = Patient("A-7", [Region("LPL1", 2, [video("LPL1", 2, (0.1, 0.2, 0.4, 0.3), (1, 2, 3))], [1, 2, 3])])
    empty = Patient("9", [], [NotScored("9/L1.txt", "9", "L1", "cannot open as image or video")])
    return Page([blue, other, empty], FACTS, ["videos/L1.mp4", "videos/R3.mp4", "videos/L2.mp4"], heatmaps_per_video=1)


def test_the_page_says_everything_in_input_order_from_plain_data():
    text = html.unescape(render(made_up_page()))
    assert text.index("Patient 12") < text.index("Patient A-7") < text.index("Patient 9")
    # the chest: BLUE points recorded, coloured by score, sets beside; the others drawn as not recorded
    chest = text[text.index("<svg viewBox=\"0 0 400 330\""):]
    assert ">L1</text>" in chest and ">{0,1,2}</text>" in chest and "R1: not recorded" in chest
    # the global score, the range its sets allow (0+2 .. 2+3) and the measured coverage in words
    assert "4 <small>global score of 6" in text and "from <b>2</b> to <b>5</b>" in text
    assert "held the expert's score for 88% of held-out videos" in text
    # a region that is no BLUE point is listed plainly; its patient has no chest
    section = text[text.index("Patient A-7"):text.index("Patient 9")]
    assert "LPL1" in section and "<svg viewBox=\"0 0 400 330\"" not in section
    # the median bar: the 50% line and one sentence why the score need not be the longest segment
    assert "50%: the median, score 1" in text and "need not be the longest segment" in text
    assert "Warning</b>: unlike the videos" in text and "no video stream" in text
    assert "Nothing of this patient could be scored" in text
    assert "frame 40: 31% of what pushes the score up" in text
    assert "frame 30: no frame of this video pushes its score up; this one pulls it down least" in text
    assert "not a diagnosis" in text and "QWK 0.24" in text and "fitted 2026-12-07" in text
    assert "openvino float32" in text and "final model, trained on all 63 patients" in text
    # self-contained: no script, no address outside the page
    assert "<script" not in text and not re.search(r"(src|href)=\"(?!data:|#)", text)
    # a batch opens with one line per patient, linked to its section
    assert '<a href="#patient-A-7">A-7</a></td><td>2 of 3</td><td>1-3</td>' in text
    assert '<a href="#patient-9">9</a></td><td>none</td><td></td><td>1 not scored</td>' in text
    assert 'id="patient-A-7"' in text


def test_the_bar_of_a_model_without_the_median_rule_has_no_50_percent_line():
    from lusfeat.page.render import bar_svg

    page = made_up_page()
    for patient in page.patients:
        for region in patient.regions:
            for clip in region.videos:
                clip.rule = "most frequent"
    text = html.unescape(render(page))
    assert "<line" not in bar_svg([0.44, 0.29, 0.19, 0.08], 0, "most frequent")
    assert "the median" not in text and "most frequent frame score" in text


def test_the_median_mark_falls_in_the_scores_segment():
    from lusfeat.page.render import bar_svg

    bar = bar_svg([0.44, 0.29, 0.19, 0.08], 1, "median")
    rects = [(float(x), float(w)) for x, w in re.findall(r'<rect x="([\d.]+)" y="16" width="([\d.]+)"', bar)]
    line = float(re.search(r'<line x1="([\d.]+)"', bar).group(1))
    left, width = rects[1]
    assert left <= line < left + width  # score 1's segment holds the 50% line, though score 0's is longer
    assert 'stroke-width="3"' in bar.split("<rect")[2]  # and it is the one outlined


# --------------------------------------------------------------------------- heat maps, computed once


def test_thumbnail_maps_are_explains_maps_of_the_heaviest_frames(tiny_study_run, tiny_study):
    from lusfeat.backbones import build_map_extractor, get_spec, resolve_weights
    from lusfeat.embed import plan_frames
    from lusfeat.heatmaps import explain_video
    from lusfeat.manifest import read_input
    from lusfeat.page.thumbnails import feature_gradients, frame_weights, video_heatmaps
    from lusfeat.runfolder import load_saved_model

    model = load_saved_model(tiny_study_run / "mobilenet" / "fold1")
    spec = get_spec("mobilenet")
    extractor = build_map_extractor(spec, resolve_weights(spec, str(tiny_study["weights"])), 224)
    manifest, _ = read_input(tiny_study["held_out"], tiny_study["root"])
    frames = plan_frames(manifest, model.extraction.frame_step)
    table = frames[frames["video_id"] == frames["video_id"].iloc[0]].reset_index(drop=True)
    every, features, _ = explain_video(extractor, model.models["video"], table, 224)
    thumbs, maps = video_heatmaps(extractor, model.models["video"], table, features, 224, 2)
    weights = frame_weights(feature_gradients(model.models["video"], features), features)
    # the frames shown are the two that push the score up most, by the mean of their own Grad-CAM map
    by_map = [every[i].frame_index for i in np.argsort([-m.cam.mean() for m in every], kind="stable")[:2]]
    assert [m.frame_index for m in maps] == by_map == [table["frame_index"].iloc[i] for i in np.argsort(-weights)[:2]]
    for frame_map in maps:  # the same map as lusfeat.explain's
        same = next(m for m in every if m.frame_index == frame_map.frame_index)
        assert np.allclose(frame_map.cam, same.cam, rtol=1e-4, atol=1e-6 * np.abs(same.cam).max())
    assert all(t.image.startswith("data:image/jpeg;base64,") for t in thumbs)
    assert 0 < thumbs[1].weight <= thumbs[0].weight <= 1


# --------------------------------------------------------------------------- what predict writes


@pytest.fixture(scope="module")
def predicted(tiny_study_run, tiny_study, tmp_path_factory) -> Path:
    """predict of the held-out patient 7 and a second, unlabelled patient folder (L1, R2 and a file that is not media)."""
    from conftest import write_tiny_video

    root = tmp_path_factory.mktemp("page_input")
    held = pd.read_csv(tiny_study["held_out"], dtype=str)
    extra = [{"path": str(write_tiny_video(root / "p8" / f"{r}.mp4", s, seed=8)), "patient_id": "8", "region": r,
              "score": "", "group": "", "video_id": f"p8_{r}"} for r, s in (("R1", 2), ("L3", 0))]
    (root / "p8" / "R2.mp4").write_text("not a video")
    extra.append({"path": str(root / "p8" / "R2.mp4"), "patient_id": "8", "region": "R2", "score": "", "group": "",
                  "video_id": "p8_R2"})
    held["path"] = [str(tiny_study["root"] / p) for p in held["path"]]
    pd.concat([pd.DataFrame(extra), held]).to_csv(root / "input.csv", index=False)
    out = root / "out"
    assert predict(["--model", str(tiny_study_run / "mobilenet" / "fold1"), str(root / "input.csv"), "--weights",
                    str(tiny_study["weights"]), "--heatmaps", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def test_predict_writes_a_page_of_every_patient_in_input_order(predicted, tiny_study_run):
    text = html.unescape((predicted / "report.html").read_text())
    result = json.loads((predicted / "predictions.json").read_text())
    assert text.index("Patient 8") < text.index("Patient 7")  # the input's order, not sorted
    for patient in result["patients"]:
        assert f"{patient['global_score']} <small>global score of {patient['global_max']}" in text
        for region in patient["regions"].values():
            for name, clip in region["videos"].items():
                start = text.index(f"video {name}</span>")
                ends = [i for i in (text.find('<div class="card">', start), text.find("</section>", start)) if i > 0]
                card = text[start:min(ends)]
                assert f"score <b>{clip['score']}</b>" in card
                assert "{" + ",".join(map(str, clip["score_set"])) + "}" in card
                assert card.count("data:image/jpeg;base64,") == 2  # --heatmaps 2
    assert "R2.mp4</span> (region R2): " in text  # not scored, with the reason
    assert "fold 1, trained on 4 patients" in text
    fitted = json.loads((tiny_study_run / "mobilenet" / "fold1" / "model.json").read_text())["fitted"]
    assert f"fitted {fitted[:10]}" in text  # the date fit recorded, not a file's time
    pooled = json.loads((tiny_study_run / "mobilenet" / "pooled" / "metrics.json").read_text())
    assert f"QWK {pooled['video']['video']['qwk']:.2f} (video level, mobilenet cross-validation" in text
    assert f"held the expert's score for {100 * pooled['video']['sets']['video']['coverage']:.0f}% of held-out" in text


# --------------------------------------------------------------------------- in a real browser

needs_chromium = pytest.mark.skipif(chromium() is None, reason=f"headless Chromium not installed: {INSTALL}")


def assert_reads_well(page: Path, width: int, expected: list[str], tmp_path: Path) -> str:
    loaded = load(page, width=width)
    assert loaded.errors == []
    assert all(url.startswith(("data:", "file:")) for url in loaded.requests), loaded.requests  # no network
    assert all(url == page.resolve().as_uri() for url in loaded.requests if url.startswith("file:"))
    assert loaded.images and all(i["complete"] and i["width"] > 0 for i in loaded.images), loaded.images
    missing = [item for item in expected if item not in loaded.dom]
    assert not missing
    assert loaded.scroll_width <= width, "the page scrolls sideways"  # wide tables scroll inside themselves
    return loaded.dom


@needs_chromium
@pytest.mark.parametrize("width", [390, 1280])
def test_the_predict_page_in_chromium(predicted, width, tmp_path):
    result = json.loads((predicted / "predictions.json").read_text())
    expected = []
    for patient in result["patients"]:
        expected += [f"Patient {patient['patient_id']}", f"{patient['global_score']} global score"]
        for key, region in patient["regions"].items():
            expected += [f"{key} {clip['score']} video {name}" for name, clip in region["videos"].items()]
            expected += [f"score {clip['score']}, score set" for clip in region["videos"].values()]
    assert_reads_well(predicted / "report.html", width, expected, tmp_path)


# --------------------------------------------------------------------------- the fit report's heat maps


@pytest.fixture(scope="module")
def fit_report(tiny_study_run, tiny_study, tmp_path_factory) -> Path:
    from lusfeat.report import main as report

    out = tmp_path_factory.mktemp("fit_report") / "report.html"
    assert report([str(tiny_study_run), "--out", str(out), "--data-root", str(tiny_study["root"]), "--weights",
                   str(tiny_study["weights"])]) == 0
    return out


def test_the_fit_report_shows_held_out_heat_maps_per_fold_and_true_score(fit_report, tiny_study_run):
    text = html.unescape(fit_report.read_text())
    for fold in (1, 2, 3):
        start = text.index(f'id="mobilenet-fold-{fold}"')
        section = text[start:text.index("<h3", start + 10)]
        assert "Heat maps of held-out videos" in section
        predictions = pd.read_csv(tiny_study_run / "mobilenet" / f"fold{fold}" / "predictions.csv")
        videos = predictions.drop_duplicates("video_id")
        captions = re.findall(r"true <b>(\d)</b>, scored <b[^>]*>(\d)</b> \((right|wrong)\)", section)
        for score in videos["score"].unique():  # every true score of the fold, one right and one wrong where there are
            mine = videos[videos["score"] == score]
            right = int((mine["video_pred"] == score).sum())
            shown = [c for c in captions if int(c[0]) == score]
            assert len(shown) == min(2, len(mine))
            assert sum(c[2] == "right" for c in shown) == min(1 if len(mine) - right else 2, right)
        assert section.count("data:image/jpeg;base64,") == len(captions) > 0


def test_the_fit_report_says_why_it_has_no_heat_maps(tiny_study_run, tmp_path):
    from lusfeat.report import main as report

    out = tmp_path / "report.html"
    assert report([str(tiny_study_run), "--out", str(out), "--data-root", str(tmp_path)]) == 0
    assert "no heat maps: the videos are not found; pass --data-root" in html.unescape(out.read_text())


@needs_chromium
@pytest.mark.parametrize("width", [390, 1280])
def test_the_fit_report_in_chromium(fit_report, tiny_study_run, width, tmp_path):
    patients = pd.read_csv(tiny_study_run / "folds.csv", dtype=str)["patient_id"]
    text = html.unescape(fit_report.read_text())
    captions = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<figcaption>(true .*?)</figcaption>", text)]
    assert len(captions) >= 3  # the heat maps' captions: true and predicted score of each
    assert_reads_well(fit_report, width, [f"Patient {p} (" for p in patients] + captions, tmp_path)


def test_a_scorer_without_heat_maps_still_gets_its_page(tiny_study_run, tiny_study, tmp_path, monkeypatch):
    from lusfeat.errors import LusfeatError
    from lusfeat.page import thumbnails

    def no_target(model):
        raise LusfeatError("no heat maps for a TestModel: it has no Grad-CAM target")

    monkeypatch.setattr(thumbnails, "target_function", no_target)
    out = tmp_path / "out"
    assert predict(["--model", str(tiny_study_run / "mobilenet" / "fold1"), str(tiny_study["held_out"]), "--data-root",
                    str(tiny_study["root"]), "--weights", str(tiny_study["weights"]), "--out", str(out),
                    "--no-progress"]) == 0
    text = html.unescape((out / "report.html").read_text())
    assert "No heat maps: no heat maps for a TestModel" in text and "data:image/jpeg" not in text
    assert "Patient 7" in text and "<b>Heat maps</b>" not in text


# --------------------------------------------------------------------------- nothing that identifies a person


def test_no_dicom_identifier_reaches_the_page(tiny_study_run, tiny_study, tmp_path):
    pytest.importorskip("pydicom", reason="DICOM support is an optional extra: pip install 'lusfeat[dicom]'")
    from conftest import cut_file, dicom_dataset, leaked_identifiers, moving_frames, write_video

    folder = tmp_path / "31"  # the patient id is the folder's name
    folder.mkdir()
    dicom_dataset(moving_frames(8, seed=1)).save_as(folder / "L1.dcm", enforce_file_format=True)
    dicom_dataset(moving_frames(8, seed=2)).save_as(folder / "R2", enforce_file_format=True)  # as archives name them
    whole = write_video(tmp_path / "whole.mp4", moving_frames(60, 96, 96), "libx264", options={"g": "12"},
                        container_options={"movflags": "faststart"})
    cut_file(whole, folder / "L3.mp4", 0.8)  # and a stream that ends early
    out = tmp_path / "out"
    assert predict(["--model", str(tiny_study_run / "mobilenet" / "fold1"), str(folder), "--weights",
                    str(tiny_study["weights"]), "--out", str(out), "--no-progress"]) == 0
    page = html.unescape((out / "report.html").read_text())
    assert leaked_identifiers(out) == {}  # the page, nor any other file predict writes
    assert "Patient 31" in page
    assert "Warning</b>: unlike the videos the model was trained on" in page  # moving discs are no lung videos
    listed = re.findall(r'<li class="path">([^<]*)</li>', page)
    assert sorted(listed) == ["L1.dcm", "L3.mp4", "R2"]  # the files read, by their paths as given (in the folder)
    start = page.index('<div class="path">L3.mp4</div>')
    card = page[start:page.index('<div class="card">', start) if '<div class="card">' in page[start:] else None]
    assert re.search(r"Warning</b>: frames are missing: its container announces 60 frames but \d+ decode \(the stream "
                     r"ends early\)", card)
