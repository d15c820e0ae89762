//! A message's encoding read field by field, without building the message:
//! validation, index entries and derived fields each need the fields of a
//! record as they are on the wire, and decoding a record into a dynamic
//! message only to walk it would cost about a fifth of a create.

use prost::encoding::{WireType, decode_key, decode_varint};
use prost_reflect::{FieldDescriptor, Kind};

/// An encoding that does not read as its message.
#[derive(Debug)]
pub enum Malformed {
    Decode(prost::DecodeError),
    /// What else is wrong with it.
    Wire(&'static str),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Decode(e) => e.fmt(f),
            Malformed::Wire(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Malformed {}

const UNDERFLOW: Malformed = Malformed::Wire("buffer underflow");

/// A value whose wire type is not its field's: what a decode would refuse.
pub const MISMATCH: Malformed = Malformed::Wire("a value's wire type does not match its field");

impl From<prost::DecodeError> for Malformed {
    fn from(e: prost::DecodeError) -> Malformed {
        Malformed::Decode(e)
    }
}

/// A field's value as it is on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// A string, bytes, a message, or a packed run of scalars.
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    /// Whether this is the value proto3 leaves out for a field without
    /// presence (zero, or empty), which reads as the field not being set.
    pub fn is_default(&self) -> bool {
        matches!(self, Value::Varint(0) | Value::Fixed64(0) | Value::Fixed32(0) | Value::Bytes([]))
    }

    /// The text of a string field's value.
    pub fn text(self) -> Result<&'a str, Malformed> {
        match self {
            Value::Bytes(bytes) => {
                std::str::from_utf8(bytes).map_err(|_| Malformed::Wire("a string that is not UTF-8"))
            }
            _ => Err(MISMATCH),
        }
    }
}

/// What reading a field's values on the wire asks of its descriptor, looked up
/// once (a walk of every write asks it of every field).
pub struct Shape {
    pub number: u32,
    pub kind: Kind,
    pub list: bool,
    pub map: bool,
    /// Whether the field tells set from default (a message, or `optional`).
    pub presence: bool,
}

impl Shape {
    pub fn of(field: &FieldDescriptor) -> Shape {
        Shape {
            number: field.number(),
            kind: field.kind(),
            list: field.is_list(),
            map: field.is_map(),
            presence: field.supports_presence(),
        }
    }

    /// Whether one value of the field on the wire sets it: a field without
    /// presence that holds its default reads as not set.
    pub fn sets(&self, value: &Value) -> bool {
        self.list || self.presence || !value.is_default()
    }

    /// Calls `each` with the items one value of the field on the wire holds:
    /// a packed run of numbers taken apart, else the value itself.
    pub fn items<'a>(
        &self,
        value: Value<'a>,
        each: &mut dyn FnMut(Value<'a>) -> Result<(), Malformed>,
    ) -> Result<(), Malformed> {
        let Value::Bytes(run) = value else { return each(value) };
        if !self.list {
            return each(value);
        }
        match &self.kind {
            Kind::String | Kind::Bytes | Kind::Message(_) => each(value),
            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => fixed_width(run, 8)?
                .try_for_each(|n| each(Value::Fixed64(u64::from_le_bytes(n.try_into().expect("8 bytes"))))),
            Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => fixed_width(run, 4)?
                .try_for_each(|n| each(Value::Fixed32(u32::from_le_bytes(n.try_into().expect("4 bytes"))))),
            _ => packed_varints(run).try_for_each(|n| each(Value::Varint(n?))),
        }
    }
}

/// The numbers of a packed run of `width` bytes each.
fn fixed_width(run: &[u8], width: usize) -> Result<std::slice::ChunksExact<'_, u8>, Malformed> {
    match run.len() % width {
        0 => Ok(run.chunks_exact(width)),
        _ => Err(Malformed::Wire("a packed field of a wrong length")),
    }
}

/// One field of an encoded message.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    /// The field's bytes on the wire, key included.
    pub raw: &'a [u8],
}

/// The fields of an encoded message, in the order they were written. After a
/// field that does not parse it yields the error and stops.
pub fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { rest: bytes }
}

pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Field<'a>, Malformed> {
        let start = self.rest;
        let mut buf = self.rest;
        let (number, wire_type) = decode_key(&mut buf)?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(decode_varint(&mut buf)?),
            WireType::SixtyFourBit => {
                let (bytes, rest) = buf.split_first_chunk::<8>().ok_or(UNDERFLOW)?;
                buf = rest;
                Value::Fixed64(u64::from_le_bytes(*bytes))
            }
            WireType::ThirtyTwoBit => {
                let (bytes, rest) = buf.split_first_chunk::<4>().ok_or(UNDERFLOW)?;
                buf = rest;
                Value::Fixed32(u32::from_le_bytes(*bytes))
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf)?).map_err(|_| Malformed::Wire("length overflow"))?;
                let bytes = buf.get(..len).ok_or(UNDERFLOW)?;
                buf = &buf[len..];
                Value::Bytes(bytes)
            }
            WireType::StartGroup | WireType::EndGroup => return Err(Malformed::Wire("groups are not supported")),
        };
        self.rest = buf;
        Ok(Field { number, value, raw: &start[..start.len() - buf.len()] })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.next_field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

/// The varints of a packed repeated field.
fn packed_varints(mut bytes: &[u8]) -> impl Iterator<Item = Result<u64, Malformed>> + '_ {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let value = decode_varint(&mut bytes).map_err(Malformed::from);
        if value.is_err() {
            bytes = &[];
        }
        Some(value)
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb::cooperation::v1::{Agreement, agreement};
    use crate::pb::google::r#type::Date;

    #[test]
    fn fields_come_in_wire_order_with_their_bytes() {
        let agreement = Agreement {
            title: "t".into(),
            instrument_type: 2,
            signature_date: Some(Date { year: 2020, month: 9, day: 9 }),
            provisions: vec![agreement::Provision { category: 3, ..Default::default() }],
            ..Default::default()
        };
        let bytes = agreement.encode_to_vec();
        let read: Vec<Field> = fields(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(read.iter().map(|f| f.raw).collect::<Vec<_>>().concat(), bytes, "the raw bytes are the message");
        let numbers = |f: &Field| f.number;
        assert!(read.windows(2).all(|w| numbers(&w[0]) < numbers(&w[1])), "prost writes in field order");
        assert!(read.iter().any(|f| f.value == Value::Varint(2)));
        assert!(read.iter().any(|f| f.value == Value::Bytes(b"t")));
        let date = read.iter().find_map(|f| match f.value {
            Value::Bytes(b) => Date::decode(b).ok().filter(|d| d.year == 2020),
            _ => None,
        });
        assert_eq!(date, Some(Date { year: 2020, month: 9, day: 9 }));
    }

    #[test]
    fn a_cut_message_yields_one_error_and_stops() {
        let bytes = Agreement { title: "title".into(), ..Default::default() }.encode_to_vec();
        for cut in 1..bytes.len() {
            let read: Vec<_> = fields(&bytes[..cut]).collect();
            assert_eq!(read.len(), 1, "cut at {cut}");
            assert!(read[0].is_err(), "cut at {cut}");
        }
        let fixed = [0x09, 1, 2, 3]; // field 1, 64-bit, three bytes of eight
        assert!(fields(&fixed).next().unwrap().is_err());
        let group = [0x0b]; // field 1, start group
        assert!(fields(&group).next().unwrap().is_err());
    }

    #[test]
    fn packed_varints_and_defaults() {
        let mut packed = Vec::new();
        for v in [0u64, 1, 300, u64::MAX] {
            prost::encoding::encode_varint(v, &mut packed);
        }
        assert_eq!(packed_varints(&packed).collect::<Result<Vec<_>, _>>().unwrap(), [0, 1, 300, u64::MAX]);
        assert!(packed_varints(&[0x80]).next().unwrap().is_err(), "a cut varint");
        assert!(Value::Varint(0).is_default() && Value::Bytes(b"").is_default());
        assert!(!Value::Varint(1).is_default() && !Value::Bytes(b"x").is_default());
    }

    /// A repeated field's items: packed runs of numbers taken apart (a
    /// repeated enum's or int's come packed from prost), strings never.
    #[test]
    fn a_repeated_fields_items_come_out_one_by_one() {
        let shape = |kind| Shape { number: 1, kind, list: true, map: false, presence: false };
        fn items<'a>(shape: &Shape, values: &[Value<'a>]) -> Result<Vec<Value<'a>>, Malformed> {
            let mut out = Vec::new();
            for value in values {
                shape.items(*value, &mut |item| {
                    out.push(item);
                    Ok(())
                })?;
            }
            Ok(out)
        }
        let mut packed = Vec::new();
        for n in [1u64, 0, 300] {
            prost::encoding::encode_varint(n, &mut packed);
        }
        let int32 = shape(Kind::Int32);
        let got = items(&int32, &[Value::Bytes(&packed), Value::Varint(5)]).unwrap();
        assert_eq!(got, [1, 0, 300, 5].map(Value::Varint), "packed, then one unpacked");
        let run = [1u8, 0, 0, 0, 2, 0, 0, 0];
        let fixed = shape(Kind::Fixed32);
        assert_eq!(items(&fixed, &[Value::Bytes(&run)]).unwrap(), [Value::Fixed32(1), Value::Fixed32(2)]);
        assert!(items(&fixed, &[Value::Bytes(&run[..7])]).is_err(), "a run of a wrong length");
        let strings = [Value::Bytes(b"a"), Value::Bytes(b"")];
        assert_eq!(items(&shape(Kind::String), &strings).unwrap(), strings, "strings are never packed");
        let single = Shape { list: false, ..shape(Kind::Int32) };
        assert_eq!(items(&single, &[Value::Bytes(b"ab")]).unwrap(), [Value::Bytes(b"ab")], "not a list");
        assert!(!single.sets(&Value::Varint(0)) && single.sets(&Value::Varint(1)));
        assert!(int32.sets(&Value::Varint(0)), "an item of a list is a value, zero or not");
    }
}
