"""The page a person reads: one self-contained HTML file of a batch of patients' scores.

``lusfeat.predict`` writes ``OUT/report.html`` with it; ``lusfeat.report`` takes its heat-map
thumbnails. Three modules, in the order the data flows:

- :mod:`lusfeat.page.content`: the plain data the page shows (:class:`Page`: patients -> regions
  -> videos, what was not scored, the model's facts) and :func:`from_predict`, the adapter from
  what ``predict`` computes;
- :mod:`lusfeat.page.thumbnails`: per video, the frames that weigh most in its score and their
  Grad-CAM overlays as JPEG ``data:`` URIs (the maps of ``lusfeat.heatmaps``, computed once);
- :mod:`lusfeat.page.render`: :func:`render` turns a :class:`Page` into HTML (inline SVG and CSS,
  images as ``data:`` URIs, no script, no network).
"""

from lusfeat.page.content import HeatMap, ModelFacts, NotScored, Page, Patient, Region, Video

__all__ = ["HeatMap", "ModelFacts", "NotScored", "Page", "Patient", "Region", "Video"]
