//! The few ONNX protobuf messages an exported model needs, written in protobuf's wire format
//! (field numbers from `onnx/onnx.proto`). A writer of eight messages is smaller than a
//! protobuf code generator and its build step, and the export test reads the result back with
//! an independent ONNX runtime.

/// `TensorProto.DataType`.
pub const FLOAT: i64 = 1;
pub const INT64: i64 = 7;

/// One message's encoded fields.
#[derive(Default)]
pub struct Message(Vec<u8>);

impl Message {
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// An `int64`/`int32`/enum field (negative values as ten-byte two's complement, as protobuf does).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }

    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }

    pub fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.0)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// `TensorProto` with its values as `raw_data` (little-endian).
pub fn tensor(name: &str, dims: &[usize], data_type: i64, raw: &[u8]) -> Message {
    let mut t = Message::default();
    for &d in dims {
        t.int(1, d as i64);
    }
    t.int(2, data_type).string(8, name).bytes(9, raw);
    t
}

pub fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> Message {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, FLOAT, &raw)
}

pub fn int64_tensor(name: &str, dims: &[usize], values: &[i64]) -> Message {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, INT64, &raw)
}

/// A dimension of a value's shape: a fixed size or a named one (the batch).
pub enum Dim<'a> {
    Fixed(usize),
    Named(&'a str),
}

/// `ValueInfoProto` of a float tensor of shape `dims`.
pub fn value_info(name: &str, dims: &[Dim<'_>]) -> Message {
    let mut shape = Message::default();
    for d in dims {
        let mut dim = Message::default();
        match d {
            Dim::Fixed(n) => dim.int(1, *n as i64),
            Dim::Named(s) => dim.string(2, s),
        };
        shape.message(1, &dim);
    }
    let mut tensor_type = Message::default();
    tensor_type.int(1, FLOAT).message(2, &shape);
    let mut type_proto = Message::default();
    type_proto.message(1, &tensor_type);
    let mut v = Message::default();
    v.string(1, name).message(2, &type_proto);
    v
}

/// An `AttributeProto` value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// `NodeProto`: `op_type` from `inputs` to `outputs` (empty input names are absent optional inputs).
pub fn node(name: &str, op_type: &str, inputs: &[&str], outputs: &[&str], attributes: &[(&str, Attr)]) -> Message {
    let mut n = Message::default();
    for i in inputs {
        n.string(1, i);
    }
    for o in outputs {
        n.string(2, o);
    }
    n.string(3, name).string(4, op_type);
    for (attr_name, value) in attributes {
        let mut a = Message::default();
        a.string(1, attr_name);
        // `AttributeProto.type`: FLOAT 1, INT 2, INTS 7.
        match value {
            Attr::Float(f) => a.float(2, *f).int(20, 1),
            Attr::Int(i) => a.int(3, *i).int(20, 2),
            Attr::Ints(v) => {
                for i in v {
                    a.int(8, *i);
                }
                a.int(20, 7)
            }
        };
        n.message(5, &a);
    }
    n
}

/// `StringStringEntryProto`, for `metadata_props`.
pub fn entry(key: &str, value: &str) -> Message {
    let mut e = Message::default();
    e.string(1, key).string(2, value);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_varints_and_negative_ints_as_protobuf_does() {
        let mut m = Message::default();
        m.int(1, 300).int(2, -1);
        let mut expected = vec![0x08, 0xac, 0x02, 0x10];
        expected.extend([0xff; 9]);
        expected.push(0x01);
        assert_eq!(m.into_bytes(), expected);
        let mut s = Message::default();
        s.string(2, "hi").float(3, 1.0);
        assert_eq!(s.into_bytes(), [0x12, 2, b'h', b'i', 0x1d, 0, 0, 0x80, 0x3f]);
    }
}
