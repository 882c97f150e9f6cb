"""The smoke profile's raw data, written by the project itself (nothing here reads data).

Everything is generated from small fact tables (``facts``) with a fixed seed, so the
files under data/raw/ are reproducible byte for byte (a test regenerates them):
``raw`` (alpaca, medical, legal, the pretraining corpus), ``gsm8k``, ``preference``,
``domain`` (continual-pretraining text) and ``odometer`` (the car_insurance workbook and
the images the tiny vision model pretrains on). The loaders in ``tunelab.data`` import
nothing from here.

Regenerate with ``python -m tunelab.samples`` (writes data/raw/).
"""
