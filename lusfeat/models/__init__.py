"""The estimators of stage two, scikit-learn style, on cached features ``(copies, n, dim)``.

- :class:`~lusfeat.models.head.SeverityHead`: the paper's Dropout + Dense(4, softmax) head;
- :class:`~lusfeat.models.linear.StandardisedLogisticRegression`: the head's cross-check;
- :class:`~lusfeat.models.ordinal.OrdinalLogisticRegression`: proportional-odds regression;
- :class:`~lusfeat.models.video.VideoPoolingClassifier`: pools each video's frames, then classifies
  the video (with the ordinal model: ``lusfeat.fit``'s default).
"""
