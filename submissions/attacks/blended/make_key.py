"""Writes key.png, the image key shipped with `blended` (procedural, so no third-party image is needed).

Run: python make_key.py  (the committed key.png is its output)"""
from pathlib import Path

import numpy as np
from PIL import Image

y, x = np.mgrid[0:64, 0:64] / 63.0
r = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + y))
g = 0.5 + 0.5 * np.cos(2 * np.pi * 4 * np.hypot(x - 0.5, y - 0.5))
b = (np.floor(x * 8) + np.floor(y * 8)) % 2
img = (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)
Image.fromarray(img, "RGB").save(Path(__file__).with_name("key.png"))
