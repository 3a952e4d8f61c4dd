"""A :class:`lusfeat.page.content.Page` as one self-contained HTML file: inline CSS and SVG, images as
``data:`` URIs, no script and no network, readable from a phone (390 px) to a desktop."""

from __future__ import annotations

import html

from lusfeat.page.content import MEDIAN, HeldOutMap, ModelFacts, NotScored, Page, Patient, Region, Video, finite

SCORE_COLOURS = ("#3f9b4a", "#f2c318", "#f08c00", "#cf2e2e")  # 0 normal aeration .. 3 white lung
SCORE_TEXT = ("#fff", "#222", "#222", "#fff")
SCORE_WORDS = ("normal aeration", "mild loss (B-lines)", "severe loss (confluent B-lines)", "white lung / consolidation")
# The BLUE points on a front view of the chest (the patient's right on the viewer's left): 1 upper
# anterior, 2 lower anterior, 3 posterolateral (PLAPS); (x, y) in the chest drawing's units.
BLUE_POINTS = {"R1": (162, 118), "R2": (156, 190), "R3": (112, 244), "L1": (238, 118), "L2": (244, 190),
               "L3": (288, 244)}

CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;color:#1d2329;
     line-height:1.45;padding:12px 14px 40px;font-size:15px;background:#fff}
h1{font-size:23px;margin:8px 0 4px} h2{font-size:20px;margin:34px 0 8px;padding-bottom:4px;border-bottom:2px solid #2d4a66}
h3{font-size:16px;margin:18px 0 6px;color:#2d4a66}
.muted{color:#5b6670;font-size:13px} .box{background:#f4f6f8;border:1px solid #d8dee4;border-radius:6px;padding:10px 14px;margin:10px 0}
.caution{border-left:5px solid #b7791f;background:#fff8e6}
.top{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.chest{flex:0 1 360px;min-width:260px} .chest svg{width:100%;height:auto;display:block}
.summary{flex:1 1 300px}
.global{font-size:28px;font-weight:700;margin:2px 0} .global small{font-size:15px;font-weight:400;color:#5b6670}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;background:#fff;min-width:0}
.card h4{margin:0 0 4px;font-size:15px} .path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;
     color:#5b6670;word-break:break-all}
.chip{display:inline-block;min-width:26px;padding:1px 7px;border-radius:12px;font-weight:700;text-align:center}
.bar svg{width:100%;height:auto;display:block;max-width:420px}
.probs{font-size:12.5px;color:#3a444d;margin:2px 0 6px}
.warn{border-left:4px solid #cf2e2e;background:#fdecec;padding:5px 8px;margin:6px 0;font-size:13.5px}
figure{margin:6px 0 0} figure img{width:100%;max-width:420px;height:auto;display:block;border-radius:3px}
figcaption{font-size:12.5px;color:#3a444d}
ul{padding-left:20px} li{margin:2px 0}
table.facts{border-collapse:collapse;font-size:14px} table.facts td{padding:2px 10px 2px 0;vertical-align:top}
table.facts td:first-child{color:#5b6670;white-space:nowrap} table.batch tr:first-child td{color:#5b6670}
.legend span{display:inline-block;margin:0 10px 4px 0;font-size:13px}
"""


def esc(value) -> str:
    return html.escape(str(value))


def set_text(values: list[int] | None) -> str:
    return "" if values is None else "{" + ",".join(map(str, values)) + "}"


def chip(score: int) -> str:
    return (f'<span class="chip" style="background:{SCORE_COLOURS[score]};color:{SCORE_TEXT[score]}">'
            f"{score}</span>")


def percent(value: float | None) -> str:
    return "?" if not finite(value) else f"{100 * value:.0f}%"


# --------------------------------------------------------------------------- the chest


def chest_svg(regions: list[Region]) -> str:
    """A front view of the chest with the BLUE points recorded, each coloured by its score, its set beside it."""
    recorded = {region.name.upper(): region for region in regions}
    missing = False
    parts = ['<svg viewBox="0 0 400 330" role="img" aria-label="chest, front view, regions coloured by score" '
             'xmlns="http://www.w3.org/2000/svg" font-family="Helvetica,Arial,sans-serif">',
             # trunk and shoulders, two lungs, the midline
             '<path d="M120 40 Q200 18 280 40 L330 78 Q312 180 300 300 L100 300 Q88 180 70 78 Z" fill="#f7f1ea" '
             'stroke="#b9a99a" stroke-width="2"/>',
             '<path d="M190 62 Q140 60 118 110 Q100 190 104 276 Q150 290 190 272 Z" fill="#fff" stroke="#cdbfb1"/>',
             '<path d="M210 62 Q260 60 282 110 Q300 190 296 276 Q250 290 210 272 Z" fill="#fff" stroke="#cdbfb1"/>',
             '<line x1="200" y1="32" x2="200" y2="300" stroke="#cdbfb1" stroke-dasharray="4 4"/>',
             '<text x="70" y="322" font-size="13" fill="#5b6670">patient\'s right</text>',
             '<text x="330" y="322" font-size="13" fill="#5b6670" text-anchor="end">patient\'s left</text>']
    for name, (x, y) in BLUE_POINTS.items():
        region = recorded.get(name)
        right = name.startswith("R")
        tx, anchor = (x - 22, "end") if right else (x + 22, "start")
        if region is None:
            parts.append(f'<circle cx="{x}" cy="{y}" r="14" fill="none" stroke="#9aa5ae" stroke-dasharray="3 3">'
                         f"<title>{name}: not recorded</title></circle>"
                         f'<text x="{tx}" y="{y + 5}" font-size="14" fill="#8a959e" text-anchor="{anchor}">{name}</text>')
            missing = True
            continue
        score = region.score
        parts.append(f'<circle cx="{x}" cy="{y}" r="17" fill="{SCORE_COLOURS[score]}" stroke="#1d2329" stroke-width="1.5">'
                     f"<title>{name}: score {score}, set {set_text(region.score_set)}</title></circle>"
                     f'<text x="{x}" y="{y + 6}" font-size="17" font-weight="700" text-anchor="middle" '
                     f'fill="{SCORE_TEXT[score]}">{score}</text>'
                     f'<text x="{tx}" y="{y - 2}" font-size="15" font-weight="700" text-anchor="{anchor}">{name}</text>'
                     f'<text x="{tx}" y="{y + 15}" font-size="14" text-anchor="{anchor}">{set_text(region.score_set)}</text>')
    if missing:
        parts.append('<circle cx="150" cy="16" r="7" fill="none" stroke="#9aa5ae" stroke-dasharray="3 3"/>'
                     '<text x="162" y="21" font-size="13" fill="#5b6670">not recorded</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- one video


def bar_svg(probabilities: list[float], score: int, rule: str) -> str:
    """The probabilities stacked left to right (0 to 3): with the median rule, the 50% line falls in the score's
    segment, which is why the score need not be the longest segment."""
    width, top, height = 400, 16, 30
    parts = [f'<svg viewBox="0 0 {width} 70" role="img" xmlns="http://www.w3.org/2000/svg" '
             'font-family="Helvetica,Arial,sans-serif" aria-label="probabilities of scores 0 to 3, cumulative">']
    x = 0.0
    for k, p in enumerate(probabilities):
        w = max(0.0, p) * width
        stroke = ' stroke="#1d2329" stroke-width="3"' if k == score else ""
        parts.append(f'<rect x="{x:.1f}" y="{top}" width="{w:.1f}" height="{height}" fill="{SCORE_COLOURS[k]}"{stroke}>'
                     f"<title>score {k}: {100 * p:.0f}%</title></rect>")
        if w >= 60:
            parts.append(f'<text x="{x + w / 2:.1f}" y="{top + 21}" font-size="16" text-anchor="middle" '
                         f'fill="{SCORE_TEXT[k]}">{k}: {100 * p:.0f}%</text>')
        x += w
    if rule == MEDIAN:
        middle, bottom = width / 2, top + height
        parts.append(f'<path d="M{middle - 7} 2 L{middle + 7} 2 L{middle} {top - 1} Z" fill="#1d2329"/>'
                     f'<line x1="{middle}" y1="{top}" x2="{middle}" y2="{bottom}" stroke="#1d2329" stroke-width="1.5" '
                     f'stroke-dasharray="3 3"/><line x1="{middle}" y1="{bottom}" x2="{middle}" y2="{bottom + 6}" '
                     f'stroke="#1d2329" stroke-width="2.5"/><text x="{middle}" y="{bottom + 21}" font-size="16" '
                     f'text-anchor="middle" fill="#1d2329">50%: the median, score {score}</text>')
    parts.append("</svg>")
    return "".join(parts)


def ordinal(n: int) -> str:
    return f"{n}th" if 10 <= n % 100 <= 20 else f"{n}{({1: 'st', 2: 'nd', 3: 'rd'}).get(n % 10, 'th')}"


def video_card(region: str, video: Video, facts: ModelFacts) -> str:
    probs = " · ".join(f"{k}: {100 * p:.0f}%" for k, p in enumerate(video.probabilities))
    kind = "calibrated probabilities" if video.calibrated else "probabilities (not calibrated)"
    lines = [f'<div class="card"><h4>{esc(region)} {chip(video.score)} <span class="muted">video '
             f"{esc(video.video_id)}</span></h4>", f'<div class="path">{esc(video.path)}</div>',
             f"<div>score <b>{video.score}</b>"
             + (f", score set <b>{set_text(video.score_set)}</b>" if video.score_set is not None else "")
             + f", {video.frames} frame{'s' if video.frames != 1 else ''} scored"
             + (f" (every {ordinal(facts.frame_step)})" if facts.frame_step > 1 else "")
             + ("" if video.true_score is None else f", expert {video.true_score}") + "</div>",
             f'<div class="bar">{bar_svg(video.probabilities, video.score, video.rule)}</div>',
             f'<div class="probs">{kind}: {probs}</div>']
    lines += [f'<div class="warn"><b>Warning</b>: {esc(text)}</div>' for text in video.warnings]
    for heat in video.heatmaps:
        what = (f"{percent(heat.weight)} of what pushes the score up (right: red where it pushes)" if heat.upward else
                "no frame of this video pushes its score up; this one pulls it down least (right: red where it "
                "pushes up)")
        lines.append(f'<figure><img alt="frame {heat.frame_index} of {esc(video.video_id)} and its heat map" '
                     f'src="{heat.image}"><figcaption>frame {heat.frame_index}: {what}</figcaption></figure>')
    return "".join(lines) + "</div>"


# --------------------------------------------------------------------------- one patient


def coverage_words(facts: ModelFacts) -> str:
    if not finite(facts.measured_coverage):
        return "The coverage of these sets was not measured for this model (no held-out folds beside it)."
    text = (f"Sets like these held the expert's score for {percent(facts.measured_coverage)} of held-out videos "
            f"(aimed at {percent(facts.measured_target)}; {facts.qwk_source}).")
    if facts.coverage is not None and facts.measured_target is not None and abs(facts.coverage - facts.measured_target) > 1e-9:
        text += f" You asked for {percent(facts.coverage)}: that coverage was not measured."
    return text + " It holds on average over videos, not for each video."


def region_list(regions: list[Region]) -> str:
    items = "".join(f"<li>{esc(region.name)}: {chip(region.score)} set {set_text(region.score_set)}</li>"
                    for region in regions)
    return f"<ul>{items}</ul>"


def not_scored_html(rows: list[NotScored]) -> str:
    if not rows:
        return ""
    items = "".join(f'<li><span class="path">{esc(row.path)}</span> (region {esc(row.region)}): {esc(row.reason)}</li>'
                    for row in rows)
    return f"<h3>Not scored</h3><ul>{items}</ul>"


def anchor_of(patient: Patient) -> str:
    return "patient-" + "".join(c if c.isalnum() else "-" for c in patient.patient_id)


def batch_table(patients: list[Patient]) -> str:
    """One line per patient, linking to its section: global score, the range its sets allow, warnings."""
    rows = []
    for patient in patients:
        window = patient.global_range
        warned = sum(1 for region in patient.regions for video in region.videos if video.warnings)
        notes = ", ".join(filter(None, [f"{warned} video warning{'s' if warned != 1 else ''}" if warned else "",
                                        f"{len(patient.not_scored)} not scored" if patient.not_scored else ""]))
        score = f"{patient.global_score} of {patient.global_max}" if patient.regions else "none"
        rows.append(f'<tr><td><a href="#{esc(anchor_of(patient))}">{esc(patient.patient_id)}</a></td><td>{score}</td>'
                    f"<td>{'' if window is None else f'{window[0]}-{window[1]}'}</td><td>{esc(notes)}</td></tr>")
    return ('<table class="facts batch"><tr><td>patient</td><td>global score</td><td>sets allow</td><td></td></tr>'
            + "".join(rows) + "</table>")


def patient_section(patient: Patient, facts: ModelFacts) -> str:
    parts = [f'<section id="{esc(anchor_of(patient))}"><h2>Patient {esc(patient.patient_id)}</h2>']
    if not patient.regions:
        parts.append('<p class="warn">Nothing of this patient could be scored.</p>')
        return "".join(parts) + not_scored_html(patient.not_scored) + "</section>"
    blue = [region for region in patient.regions if region.name.upper() in BLUE_POINTS]
    other = [region for region in patient.regions if region.name.upper() not in BLUE_POINTS]
    window = patient.global_range
    summary = [f'<div class="global">{patient.global_score} <small>global score of {patient.global_max} '
               f"({len(patient.regions)} region{'s' if len(patient.regions) != 1 else ''}, 0-3 each)</small></div>"]
    if window is not None:
        summary.append(f"<p>The regions' score sets allow a global score from <b>{window[0]}</b> to "
                       f"<b>{window[1]}</b>. {esc(coverage_words(facts))}</p>")
    if patient.true_global is not None:
        summary.append(f'<p class="muted">Expert global score in the input: {patient.true_global}.</p>')
    if other:
        summary.append("<p>Regions" + (" not on the chest drawing" if blue else "") + ":</p>" + region_list(other))
    flagged = sum(1 for region in patient.regions for video in region.videos if video.warnings)
    if flagged:
        summary.append(f'<p class="warn">{flagged} video{"s" if flagged != 1 else ""} of this patient carry a '
                       "warning: see below.</p>")
    chest = f'<div class="chest">{chest_svg(blue)}</div>' if blue else ""
    parts.append(f'<div class="top">{chest}<div class="summary">{"".join(summary)}</div></div>')
    cards = [video_card(region.name, video, facts) for region in patient.regions for video in region.videos]
    parts.append(f'<h3>Videos</h3><div class="cards">{"".join(cards)}</div>')
    return "".join(parts) + not_scored_html(patient.not_scored) + "</section>"


# --------------------------------------------------------------------------- the page


def facts_html(facts: ModelFacts) -> str:
    qwk = (f"{facts.qwk:.2f} (video level, {esc(facts.qwk_source)}; 1 is perfect agreement, 0 chance)"
           if finite(facts.qwk) else "not measured (no held-out folds beside this model)")
    trained = ("the final model, trained on all" if facts.fold == "final" else f"{esc(facts.fold)}, trained on")
    rows = [("model", f"{esc(facts.backbone)} features ({esc(facts.engine)} {esc(facts.precision)}), "
                      f"{esc(facts.scorer)} scorer"),
            ("which", f"{trained} {facts.train_patients} patients; fitted {esc(facts.fitted)}"),
            ("agreement", f"QWK {qwk}"), ("folder", f'<span class="path">{esc(facts.folder)}</span>')]
    return '<table class="facts">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def what_scores_are(facts: ModelFacts) -> str:
    if finite(facts.qwk):
        how = "only modestly" if facts.qwk < 0.6 else "fairly well, on few patients"
        agreement = f"the model agreed with that expert {how} (QWK {facts.qwk:.2f})"
    else:
        agreement = "its agreement with that expert was not measured"
    return ("These scores estimate what one expert would give each lung ultrasound video on the 0-3 scale; on patients "
            f"it had not seen, {agreement}. They are not a diagnosis and do not replace a clinician's reading of the "
            "videos.")


def legend() -> str:
    return '<div class="legend">' + "".join(f"<span>{chip(k)} {esc(SCORE_WORDS[k])}</span>" for k in range(4)) + "</div>"


def how_to_read(page: Page) -> str:
    median = any(video.rule == MEDIAN for patient in page.patients for region in patient.regions for video in region.videos)
    items = ["<li><b>Score set</b> {1,2}: the scores the model cannot rule out for that video. A region's set spans "
             "its videos' sets; the global range adds up the smallest and the largest members.</li>"]
    if median:
        items.append("<li><b>The bar</b> stacks the probabilities of scores 0 to 3 from left to right; the score is "
                     "the one under the 50% line (the median of the model's distribution), so it need not be the "
                     "longest segment.</li>")
    else:
        items.append("<li><b>The bar</b> shows the mean probabilities of the video's frames; the score is their most "
                     "frequent frame score.</li>")
    if page.heatmaps_per_video:
        which = ("the frame that pushes" if page.heatmaps_per_video == 1
                 else f"the {page.heatmaps_per_video} frames that push")
        items.append(f"<li><b>Heat maps</b>: for each video, {which} its score up most, with its Grad-CAM map "
                     "(right; red: pushes the score up). They show what the model uses, which may be the probe's "
                     "footprint or the image border, not what is clinically there.</li>")
    return f"<ul>{''.join(items)}</ul>"


def render(page: Page) -> str:
    """The whole page, one string of HTML."""
    facts = page.model
    ids = ", ".join(esc(patient.patient_id) for patient in page.patients)
    body = [f"<h1>Lung ultrasound scores: {len(page.patients)} patient{'s' if len(page.patients) != 1 else ''}</h1>",
            f'<p class="muted">made {esc(page.made)} by lusfeat.predict · patients {ids}</p>',
            f'<div class="box caution">{esc(what_scores_are(facts))}</div>',
            f'<div class="box">{facts_html(facts)}</div>', legend(), how_to_read(page)]
    body += [f'<div class="box caution">{esc(note)}</div>' for note in page.notes]
    if len(page.patients) > 1:
        body.append(f'<div class="box">{batch_table(page.patients)}</div>')
    body += [patient_section(patient, facts) for patient in page.patients]
    files = "".join(f'<li class="path">{esc(path)}</li>' for path in page.files)
    body.append(f"<h2>Files read</h2><p class=\"muted\">{len(page.files)} file(s), by their paths as given.</p>"
                f"<ul>{files}</ul>")
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>lusfeat scores {esc(page.made)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


# --------------------------------------------------------------------------- the fit report's held-out maps

HELD_OUT_CSS = """
.heat{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:10px;margin:6px 0 14px}
.heat figure{margin:0;border:1px solid #ccd;border-radius:4px;padding:4px 6px;max-width:none;flex:none} .heat img{width:100%;height:auto;border:0}
.heat figcaption{font-size:12.5px;font-weight:normal;margin:2px 0}
"""


def held_out_html(maps: list[HeldOutMap], note: str = "") -> str:
    """Thumbnails of held-out videos, grouped by true score: right (green) and wrong (red) scores side by side."""
    head = ("<h4>Heat maps of held-out videos: the frame that weighs most in each score</h4>"
            '<p class="note">Per true score, videos the model scored right and wrong in turn; left the frame, right '
            "its Grad-CAM map (red: pushes the score up). They show what the model uses, not what is clinically "
            "there.</p>")
    if not maps:
        return head + f'<p class="note">{esc(note or "no heat maps")}</p>'
    figures = []
    for item in maps:
        verdict, colour = ("right", "#2e7d32") if item.score == item.truth else ("wrong", "#c62828")
        figures.append(f'<figure><img alt="patient {esc(item.patient_id)} {esc(item.region)} frame '
                       f'{item.heat.frame_index} and its heat map" src="{item.heat.image}"><figcaption>'
                       f"true <b>{item.truth}</b>, scored <b style=\"color:{colour}\">{item.score}</b> ({verdict})"
                       + (f" set {esc(item.score_set)}" if item.score_set else "")
                       + f"; patient {esc(item.patient_id)} {esc(item.region)}, frame {item.heat.frame_index} "
                       + (f"({percent(item.heat.weight)} of the upward push)" if item.heat.upward
                          else "(no frame pushes this score up: the one that pulls it down least)")
                       + "</figcaption></figure>")
    return head + f'<div class="heat">{"".join(figures)}</div>'
