"""Candidates that lost: runnable and tested, measured in ``docs/experiments.md``, never imported by the product.

- :mod:`~lusfeat.experiments.lung_crop`: crop the pleural sector before the backbone;
- :mod:`~lusfeat.experiments.lus_signal`: hand-made brightness profiles of the frame;
- :mod:`~lusfeat.experiments.finetune`: retrain Xception's top block(s) on cached activation maps;
- :mod:`~lusfeat.experiments.attention`: attention pooling over a video's frames.
"""
