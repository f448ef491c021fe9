#!/usr/bin/env python3
"""Computes the reference outputs of EfficientNet-Lite0 that tanuki's parity test
(`efficientnet_lite0_matches_keras` in src/train/backbone_tests.rs) compares against, with an
implementation independent of tanuki's: Keras layers (benches/keras_effnet_lite.py) on
TensorFlow's kernels and padding.

    python3 benches/efficientnet_lite0_reference.py   # writes tests/data/efficientnet_lite0_160.reference.safetensors

Not part of CI (it needs TensorFlow: it creates the venv of benches/keras_env.py on first use).
Input: the real photos stored, already resized to 160x160, in
`../shared/weights/reference/mobilenet_v2_1.0_160.keras_reference.safetensors`
(`input_nhwc_0_255`), normalised as the weights expect, `(x - 127) / 128`. Weights:
`../shared/weights/efficientnet_lite0_imagenet.effnetlite_names.safetensors`. Output, per photo:
`pooled` (the backbone's global average, N x 1280) and `logits` (the ImageNet classifier, N x
1000), float32, in kilobytes.
"""
import os
import sys

from keras_env import ensure_venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "weights")
OUT = os.path.join(ROOT, "tests", "data", "efficientnet_lite0_160.reference.safetensors")


def main():
    import numpy as np
    import tensorflow as tf
    import keras

    from keras_effnet_lite import build, load, read_safetensors, write_safetensors

    weights = read_safetensors(os.path.join(SHARED, "efficientnet_lite0_imagenet.effnetlite_names.safetensors"))
    photos = read_safetensors(os.path.join(SHARED, "reference", "mobilenet_v2_1.0_160.keras_reference.safetensors"))
    x = (photos["input_nhwc_0_255"] - 127.0) / 128.0
    model, named = build(x.shape[1], classes=1000)
    load(named, weights)
    pooled_model = keras.Model(model.input, model.layers[-2].output)
    pooled = pooled_model.predict(x, verbose=0)
    logits = model.predict(x, verbose=0)
    for i, row in enumerate(logits):
        top = np.argsort(row)[::-1][:3]
        print(f"photo {i}: top ImageNet classes {list(top)}; |pooled| max {np.abs(pooled[i]).max():.3f}")
    meta = {
        "source": "benches/efficientnet_lite0_reference.py",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "input": "input_nhwc_0_255 of mobilenet_v2_1.0_160.keras_reference.safetensors, (x - 127) / 128",
    }
    write_safetensors(OUT, {"pooled": pooled, "logits": logits}, meta)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    ensure_venv(__file__)
    main()
