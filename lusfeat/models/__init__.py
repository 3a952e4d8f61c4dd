"""The estimators of stage two, scikit-learn style, on cached features ``(copies, n, dim)``.

One signature: ``fit(X, y, *, index)``, ``predict_proba(X, *, index)``, ``predict(X, *, index)``
(``index``: :class:`lusfeat.index.FrameIndex`). :mod:`lusfeat.models.registry` lists the models
``lusfeat.fit`` trains: :class:`~lusfeat.models.head.SeverityHead` (the paper's head),
:class:`~lusfeat.models.linear.StandardisedLogisticRegression` (its cross-check) and
:class:`~lusfeat.models.video.VideoPoolingClassifier` with
:class:`~lusfeat.models.ordinal.OrdinalLogisticRegression` (the default), each inside
:class:`~lusfeat.models.calibrated.Calibrated`; every one is saved as data (:mod:`lusfeat.models.saving`).
"""
