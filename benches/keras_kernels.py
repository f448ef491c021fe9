#!/usr/bin/env python3
"""Times the cases of `cargo bench --bench kernels` in TensorFlow/Keras, on the same machine.

    python3 benches/keras_kernels.py   # creates its venv on first use (KERAS_BENCH_VENV,
                                       # default ~/.cache/tanuki/keras-bench-venv)

Not part of CI. It creates its own virtual environment (pip install tensorflow-cpu keras), then
re-runs itself inside it. Prints the same table: median milliseconds per call after a warm-up,
batch 32, f32. TensorFlow runs NHWC (its fast CPU layout); the shapes are the same as the Rust
bench's NCHW ones. Forward+backward is one tf.GradientTape step with gradients for both the
input and the kernel, seeded with ones (like candle's `y.backward()`), returning the output too
(otherwise TF prunes the forward pass, which a convolution's gradients do not need).
Environment: BENCH_QUICK=1 (fewer runs), BENCH_FILTER=substring, TF_THREADS (default: all cores).
"""
import os
import sys
import time

from keras_env import ensure_venv


def main():
    import numpy as np
    import tensorflow as tf

    threads = int(os.environ.get("TF_THREADS", os.cpu_count()))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    quick = bool(os.environ.get("BENCH_QUICK"))
    max_runs, budget = (3, 1.0) if quick else (11, 4.0)
    filt = os.environ.get("BENCH_FILTER", "")

    def time_ms(f):
        f()
        runs, start = [], time.perf_counter()
        while len(runs) < 3 or (len(runs) < max_runs and time.perf_counter() - start < budget):
            t = time.perf_counter()
            f()
            runs.append((time.perf_counter() - t) * 1e3)
        runs.sort()
        return runs[len(runs) // 2]

    rng = np.random.default_rng(0)

    def case(name, x_nchw, op, w_shape=None):
        if filt and filt not in name:
            return
        n, c, h, w = x_nchw
        x = tf.Variable(rng.standard_normal((n, h, w, c), dtype=np.float32))
        k = tf.Variable(rng.standard_normal(w_shape, dtype=np.float32)) if w_shape else None
        fwd = tf.function(lambda: op(x, k))
        y = fwd()
        seed = tf.ones_like(y)

        @tf.function
        def fwd_bwd():
            with tf.GradientTape() as tape:
                out = op(x, k)
            # Return the output too: a convolution's gradients do not need its output, so
            # without it TF prunes the forward pass and times the backward alone.
            return [out] + tape.gradient(out, [x] + ([k] if k is not None else []), output_gradients=seed)

        for label, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            ms = time_ms(lambda: [t.numpy() for t in tf.nest.flatten(f())][:0])
            print(f"| {name + ' ' + label:<44} | {ms:>9.2f} |", flush=True)

    def conv(stride, padding):
        return lambda x, k: tf.nn.conv2d(x, k, stride, padding)

    def dw(stride, padding):
        return lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, stride, stride, 1], padding)

    print(f"TensorFlow {tf.__version__}, keras {__import__('keras').__version__}, {threads} threads")
    print("batch 32, f32, NHWC; milliseconds per call, median\n")
    print(f"| {'case':<44} | {'TF':>9} |")
    print(f"|{'-' * 46}|{'-' * 11}|")
    # Symmetric padding 1 with a 3x3 kernel at stride 1 is "SAME"; at stride 2 the Rust bench pads
    # top/left too (PyTorch style), which TF cannot express: TF runs "SAME" there (same cost).
    case("conv3x3 56x56 64->64 s1", (32, 64, 56, 56), conv(1, "SAME"), (3, 3, 64, 64))
    case("conv3x3 56x56 64->64 s2", (32, 64, 56, 56), conv(2, "SAME"), (3, 3, 64, 64))
    case("conv3x3 14x14 256->256 s1", (32, 256, 14, 14), conv(1, "SAME"), (3, 3, 256, 256))
    case("conv1x1 28x28 192->64", (32, 192, 28, 28), conv(1, "VALID"), (1, 1, 192, 64))
    case("depthwise3x3 112x112x96 s1", (32, 96, 112, 112), dw(1, "SAME"), (3, 3, 96, 1))
    case("depthwise3x3 112x112x96 s2 (TF same)", (32, 96, 112, 112), dw(2, "SAME"), (3, 3, 96, 1))
    case("depthwise3x3 28x28x192 s1", (32, 192, 28, 28), dw(1, "SAME"), (3, 3, 192, 1))
    case("depthwise3x3 28x28x192 s2", (32, 192, 28, 28), dw(2, "SAME"), (3, 3, 192, 1))
    case("maxpool3x3 s2 (TF same) 147x147x64", (32, 64, 147, 147),
         lambda x, _: tf.nn.max_pool2d(x, 3, 2, "SAME"))


if __name__ == "__main__":
    ensure_venv(__file__)
    if "--install-only" not in sys.argv:
        main()
