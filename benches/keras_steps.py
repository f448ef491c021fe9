#!/usr/bin/env python3
"""Times the model cases of `cargo bench --bench model_steps` in Keras, on the same machine.

    python3 benches/keras_steps.py   # creates its venv on first use (KERAS_BENCH_VENV,
                                     # default ~/.cache/tanuki/keras-bench-venv, shared with
                                     # benches/keras_kernels.py)

Not part of CI. It creates its own virtual environment (pip install tensorflow-cpu keras), then
re-runs itself inside it. Cases, batch 32, f32, median milliseconds per step after warm-up:
(c) the small CNN (conv3x3-BN-ReLU-maxpool blocks 32/64/128/256, 96x96): forward (inference)
and a full training step; (d) MobileNetV2 alpha 1.0 at 160x160 (random weights; the cost does
not depend on them): a training step with the backbone frozen (BN in inference mode) and with
everything trainable. A step is one compiled `train_on_batch`-equivalent (`tf.function` with
GradientTape and Adam), as `model.fit` runs it; the head is global average pooling, dropout 0.2
and a 1-unit dense layer with binary cross-entropy, as in the Rust bench. (e) EfficientNet-Lite0 at
160x160, the same two steps (built from Keras layers in benches/keras_effnet_lite.py).
Environment: BENCH_QUICK=1 (fewer runs), BENCH_FILTER=substring, TF_THREADS (default: all cores).
"""
import os
import sys
import time

from keras_env import ensure_venv


def main():
    import numpy as np
    import tensorflow as tf
    import keras
    from keras import layers

    threads = int(os.environ.get("TF_THREADS", os.cpu_count()))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    quick = bool(os.environ.get("BENCH_QUICK"))
    max_runs, budget = (3, 2.0) if quick else (7, 8.0)
    filt = os.environ.get("BENCH_FILTER", "")
    rng = np.random.default_rng(0)

    def time_ms(f):
        f()
        runs, start = [], time.perf_counter()
        while len(runs) < 3 or (len(runs) < max_runs and time.perf_counter() - start < budget):
            t = time.perf_counter()
            f()
            runs.append((time.perf_counter() - t) * 1e3)
        runs.sort()
        return runs[len(runs) // 2]

    def head(features):
        x = layers.GlobalAveragePooling2D()(features)
        x = layers.Dropout(0.2)(x)
        return layers.Dense(1)(x)

    def small_cnn(side):
        inputs = keras.Input((side, side, 3))
        x = inputs
        for width in (32, 64, 128, 256):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
            x = layers.MaxPooling2D(2)(x)
        return keras.Model(inputs, head(x)), None

    def mobilenet(side):
        base = keras.applications.MobileNetV2(input_shape=(side, side, 3), alpha=1.0, include_top=False, weights=None)
        inputs = keras.Input((side, side, 3))
        # training=False when frozen: BN in inference mode, as the guide's head-only phase.
        frozen = base(inputs, training=False)
        return keras.Model(inputs, head(frozen)), keras.Model(inputs, head(base(inputs))), base

    def effnet_lite0(side):
        from keras_effnet_lite import build

        base, _ = build(side, pooled=False)
        inputs = keras.Input((side, side, 3))
        frozen = base(inputs, training=False)
        return keras.Model(inputs, head(frozen)), keras.Model(inputs, head(base(inputs))), base

    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    def step_fn(model):
        opt = keras.optimizers.Adam(1e-4)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return step

    def row(name, f):
        if filt and filt not in name:
            return
        print(f"| {name:<50} | {time_ms(f):>9.1f} |", flush=True)

    print(f"TensorFlow {tf.__version__}, keras {keras.__version__}, {threads} threads")
    print("batch 32, f32, NHWC; milliseconds per step, median\n")
    print(f"| {'case':<50} | {'Keras':>9} |")
    print(f"|{'-' * 52}|{'-' * 11}|")
    y = tf.constant((np.arange(32) % 2).astype(np.float32).reshape(32, 1))

    x = tf.constant(rng.uniform(-1, 1, (32, 96, 96, 3)).astype(np.float32))
    cnn, _ = small_cnn(96)
    predict = tf.function(lambda x: cnn(x, training=False))
    row("(c) small CNN 96x96, forward", lambda: predict(x).numpy())
    step = step_fn(cnn)
    row("(c) small CNN 96x96, training step", lambda: step(x, y).numpy())

    x = tf.constant(rng.uniform(-1, 1, (32, 160, 160, 3)).astype(np.float32))

    def frozen_and_full(name, build):
        frozen_model, full_model, base = build(160)
        base.trainable = False
        frozen = step_fn(frozen_model)
        row(f"{name} 160, step, backbone frozen", lambda: frozen(x, y).numpy())
        base.trainable = True
        full = step_fn(full_model)
        row(f"{name} 160, step, all trainable", lambda: full(x, y).numpy())

    frozen_and_full("(d) MobileNetV2", mobilenet)
    frozen_and_full("(e) EfficientNet-Lite0", effnet_lite0)


if __name__ == "__main__":
    ensure_venv(__file__)
    if "--install-only" not in sys.argv:
        main()
