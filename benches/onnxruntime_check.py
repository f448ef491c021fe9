"""A job's ONNX export run by onnxruntime, on inputs prepared from the file's own metadata.

Checks the exported file with `onnx.checker` (full check), prepares photos the way
`tanuki.preprocessing` says (written here from the metadata alone, in numpy: the bilinear resize
with half-pixel centres and no antialiasing, then scale/offset or mean/std), runs them in
onnxruntime and prints the largest difference from the server's `/predict`.

    python3 -m venv /tmp/ortvenv && /tmp/ortvenv/bin/pip install onnx onnxruntime numpy pillow
    /tmp/ortvenv/bin/python benches/onnxruntime_check.py http://127.0.0.1:8080 JOB_ID [JOB_ID ...]

The photos are sent as PNG, decoded once by PIL, so that both sides see the same pixels; with
`--jpeg` they are sent as they are, and the difference includes that of two JPEG decoders.
"""

import io
import json
import os
import sys
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "../../shared/data/cats_and_dogs_filtered/validation")


def axis(dst, n):
    # In float32 and rounded half away from zero, as the server computes it.
    f = np.float32
    s = np.maximum((np.arange(dst, dtype=f) + f(0.5)) * f(f(n) / f(dst)) - f(0.5), f(0))
    lo = np.minimum(np.floor(s).astype(int), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (s - lo).astype(np.float32)


def resize(a, h, w):
    (y0, y1, fy), (x0, x1, fx) = axis(h, a.shape[0]), axis(w, a.shape[1])
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = a[y0][:, x0] + (a[y0][:, x1] - a[y0][:, x0]) * fx
    bottom = a[y1][:, x0] + (a[y1][:, x1] - a[y1][:, x0]) * fx
    return np.clip(np.floor(top + (bottom - top) * fy + np.float32(0.5)), 0, 255)


def prepare(rgb, pre):
    if pre["resize"] != "stretch":
        raise SystemExit(f"this check prepares resize=stretch only, not {pre['resize']}")
    a = resize(rgb.astype(np.float32), pre["height"], pre["width"])
    if "scale" in pre:
        a = a * np.float32(pre["scale"]) + np.float32(pre["offset"])
    else:
        a = (a / np.float32(255) - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return a.transpose(2, 0, 1)


def main():
    args = [a for a in sys.argv[1:] if a != "--jpeg"]
    jpeg = "--jpeg" in sys.argv
    server, jobs = args[0], args[1:]
    paths = [f"{ROOT}/cats/cat.{2000 + i}.jpg" for i in range(5)] + [f"{ROOT}/dogs/dog.{2000 + i}.jpg" for i in range(5)]
    for job in jobs:
        model_bytes = urllib.request.urlopen(f"{server}/v1/jobs/{job}/export?format=onnx").read()
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        pre, classes = json.loads(meta["tanuki.preprocessing"]), json.loads(meta["tanuki.classes"])
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        bodies, inputs = [], []
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            if jpeg:
                bodies.append((open(path, "rb").read(), "image/jpeg"))
            else:
                png = io.BytesIO()
                Image.fromarray(rgb).save(png, format="PNG")
                bodies.append((png.getvalue(), "image/png"))
            inputs.append(prepare(rgb, pre))
        probabilities = session.run(["probabilities"], {"input": np.stack(inputs).astype(np.float32)})[0]
        diffs = []
        for (body, kind), row in zip(bodies, probabilities):
            request = urllib.request.Request(f"{server}/v1/jobs/{job}/predict", data=body, headers={"content-type": kind})
            ours = {p["class"]: p["probability"] for p in json.load(urllib.request.urlopen(request))["predictions"]}
            diffs.append(max(abs(ours[c] - row[i]) for i, c in enumerate(classes)))
        print(f"{meta['tanuki.architecture']}: onnx.checker passed; onnxruntime {ort.__version__}, {len(paths)} photos "
              f"({'JPEG' if jpeg else 'PNG'}): max |onnxruntime - predict| = {max(diffs):.2e}")


if __name__ == "__main__":
    main()
