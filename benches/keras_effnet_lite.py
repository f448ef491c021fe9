"""EfficientNet-Lite0 written in Keras layers, independently of tanuki's Rust model: the
reference for its parity test (benches/efficientnet_lite0_reference.py) and the peer of its
training steps (benches/keras_steps.py).

The architecture as TensorFlow's `efficientnet_lite_builder` builds `efficientnet-lite0`:
EfficientNet-B0's block arguments without squeeze-and-excitation, ReLU6, stem 32 and head 1280
channels fixed, batch-norm epsilon 1e-3, convolutions with TensorFlow's "SAME" padding (Keras's
`padding="same"`), a residual add where stride is 1 and the width unchanged."""

# (expansion, kernel, stride of the first block, output filters, repeats) per stage.
STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def build(side, classes=None, pooled=True):
    """`(model, layers)`: the backbone on a `side` x `side` RGB input (already normalised), then
    (with `pooled`) global average pooling and, with `classes`, the 1000-class `_fc`. `layers` maps each module
    name of the PyTorch port (`_conv_stem`, `_blocks.3._bn1`, `_fc`) to its Keras layer, for
    loading weights by those names."""
    import keras
    from keras import layers as L

    named = {}

    def conv(name, filters, kernel, stride=1):
        named[name] = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)
        return named[name]

    def bn(name):
        named[name] = L.BatchNormalization(epsilon=1e-3, momentum=0.99)
        return named[name]

    inputs = keras.Input((side, side, 3))
    x = L.ReLU(6.0)(bn("_bn0")(conv("_conv_stem", 32, 3, 2)(inputs)))
    channels, n = 32, 0
    for expansion, kernel, first_stride, filters, repeats in STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            block_input, p = x, f"_blocks.{n}"
            wide = channels * expansion
            if expansion != 1:
                x = L.ReLU(6.0)(bn(f"{p}._bn0")(conv(f"{p}._expand_conv", wide, 1)(x)))
            named[f"{p}._depthwise_conv"] = L.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False)
            x = L.ReLU(6.0)(bn(f"{p}._bn1")(named[f"{p}._depthwise_conv"](x)))
            x = bn(f"{p}._bn2")(conv(f"{p}._project_conv", filters, 1)(x))
            if stride == 1 and channels == filters:
                x = L.Add()([block_input, x])
            channels, n = filters, n + 1
    x = L.ReLU(6.0)(bn("_bn1")(conv("_conv_head", 1280, 1)(x)))
    if not pooled:
        return keras.Model(inputs, x), named
    x = L.GlobalAveragePooling2D()(x)
    if classes:
        named["_fc"] = L.Dense(classes)
        x = named["_fc"](x)
    return keras.Model(inputs, x), named


def load(named, tensors):
    """Sets every layer of `named` from `tensors` (name → numpy array, the port's layouts)."""
    import numpy as np
    from keras import layers as L

    for name, layer in named.items():
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([tensors[f"{name}.{w}"] for w in ("weight", "bias", "running_mean", "running_var")])
        elif isinstance(layer, L.DepthwiseConv2D):
            layer.set_weights([np.transpose(tensors[f"{name}.weight"], (2, 3, 0, 1))])  # (C,1,k,k) → (k,k,C,1)
        elif isinstance(layer, L.Conv2D):
            layer.set_weights([np.transpose(tensors[f"{name}.weight"], (2, 3, 1, 0))])  # OIHW → HWIO
        elif isinstance(layer, L.Dense):
            layer.set_weights([tensors[f"{name}.weight"].T, tensors[f"{name}.bias"]])
        else:
            raise TypeError(name)


def read_safetensors(path):
    """name → numpy array for a safetensors file of F32 tensors (no dependency beyond numpy)."""
    import json
    import struct

    import numpy as np

    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + start : 8 + n + end], dtype="<f4").reshape(info["shape"]).copy()
    return out


def write_safetensors(path, tensors, metadata):
    """Writes name → float32 numpy array as safetensors, with string metadata."""
    import json
    import struct

    import numpy as np

    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        blob = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
