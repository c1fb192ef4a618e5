//! The fixed-layout encoding of `map_fn` batches: plain values (numbers,
//! `bool`, `char`, and tuples, arrays and structs of them) written as their
//! little-endian bytes, one after the other, with no length, tag or varint.
//!
//! A batch of such values travels as one part `[u32 count][u32 size]` then
//! `count` values of `size` bytes each, instead of one postcard-encoded
//! part per value: the per-item cost becomes a few stores and loads. It is
//! chosen automatically, from what the values' `Serialize` does: anything
//! else (a string, a sequence, an `Option`, an enum, a handle holding a
//! descriptor) makes [`encode`] fail, and the batch goes the general way.
//! A type whose values do not all take the same size goes the general way
//! too (the caller compares each value's size with the first's).
//!
//! Decoding reads what the type asks for and checks that each value takes
//! exactly `size` bytes: bytes from another process are checked like any
//! other (a `bool` that is not 0 or 1, a `char` that is not one, a short
//! value are errors, never a panic).

use serde::de::{self, DeserializeOwned, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{self, Serialize};
use std::fmt;

/// Bytes before the values of a fixed part.
pub(crate) const HEAD: usize = 8;

/// Why a value has no fixed layout, or fixed bytes did not decode.
#[derive(Debug)]
pub(crate) struct NotFixed(String);

impl fmt::Display for NotFixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFixed {}

impl ser::Error for NotFixed {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotFixed(msg.to_string())
    }
}

impl de::Error for NotFixed {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotFixed(msg.to_string())
    }
}

fn not_fixed<T>(what: &str) -> Result<T, NotFixed> {
    Err(NotFixed(format!("{what} has no fixed layout")))
}

/// Appends `value`'s fixed bytes to `out`; on `Err`, `out` may hold part
/// of them (the caller truncates).
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), NotFixed> {
    value.serialize(Ser { out })
}

/// Decodes one value that must take all of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, NotFixed> {
    let mut input = bytes;
    let v = T::deserialize(De { input: &mut input })?;
    if !input.is_empty() {
        return Err(NotFixed(format!(
            "{} bytes were left over of a fixed-layout value",
            input.len()
        )));
    }
    Ok(v)
}

/// Writes the head of a fixed part.
pub(crate) fn head(count: usize, size: usize) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[..4].copy_from_slice(&(count as u32).to_le_bytes());
    h[4..].copy_from_slice(&(size as u32).to_le_bytes());
    h
}

/// Splits a fixed part into its values' bytes: `size` bytes each, `count`
/// of them (`Err` if the part does not hold exactly that).
pub(crate) fn values(part: &[u8]) -> Result<Values<'_>, NotFixed> {
    let Some((h, rest)) = part.split_first_chunk::<HEAD>() else {
        return Err(NotFixed(
            "a fixed-layout part is shorter than its head".into(),
        ));
    };
    let count = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if count.checked_mul(size) != Some(rest.len()) {
        return Err(NotFixed(format!(
            "a fixed-layout part of {} bytes does not hold {count} values of {size} bytes",
            rest.len()
        )));
    }
    Ok(Values {
        rest,
        size,
        left: count,
    })
}

/// The values' bytes of a fixed part, one slice per value.
#[derive(Debug)]
pub(crate) struct Values<'a> {
    rest: &'a [u8],
    size: usize,
    left: usize,
}

impl Values<'_> {
    /// How many values are left.
    pub(crate) fn len(&self) -> usize {
        self.left
    }
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (v, rest) = self.rest.split_at(self.size);
        self.rest = rest;
        Some(v)
    }
}

struct Ser<'a> {
    out: &'a mut Vec<u8>,
}

macro_rules! put {
    ($($f:ident $t:ty),*) => {$(
        fn $f(self, v: $t) -> Result<(), NotFixed> {
            self.out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = NotFixed;
    type SerializeSeq = ser::Impossible<(), NotFixed>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = ser::Impossible<(), NotFixed>;
    type SerializeMap = ser::Impossible<(), NotFixed>;
    type SerializeStruct = Self;
    type SerializeStructVariant = ser::Impossible<(), NotFixed>;

    put!(serialize_i8 i8, serialize_i16 i16, serialize_i32 i32, serialize_i64 i64,
         serialize_i128 i128, serialize_u8 u8, serialize_u16 u16, serialize_u32 u32,
         serialize_u64 u64, serialize_u128 u128, serialize_f32 f32, serialize_f64 f64);

    fn serialize_bool(self, v: bool) -> Result<(), NotFixed> {
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), NotFixed> {
        self.serialize_u32(v as u32)
    }
    fn serialize_str(self, _: &str) -> Result<(), NotFixed> {
        not_fixed("a string")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), NotFixed> {
        not_fixed("a byte string")
    }
    fn serialize_none(self) -> Result<(), NotFixed> {
        not_fixed("an Option")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), NotFixed> {
        not_fixed("an Option")
    }
    fn serialize_unit(self) -> Result<(), NotFixed> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotFixed> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NotFixed> {
        not_fixed("an enum")
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), NotFixed> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotFixed> {
        not_fixed("an enum")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotFixed> {
        not_fixed("a sequence")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, NotFixed> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, NotFixed> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotFixed> {
        not_fixed("an enum")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotFixed> {
        not_fixed("a map")
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, NotFixed> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotFixed> {
        not_fixed("an enum")
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

impl ser::SerializeTuple for Ser<'_> {
    type Ok = ();
    type Error = NotFixed;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NotFixed> {
        v.serialize(Ser { out: self.out })
    }
    fn end(self) -> Result<(), NotFixed> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Ser<'_> {
    type Ok = ();
    type Error = NotFixed;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NotFixed> {
        v.serialize(Ser { out: self.out })
    }
    fn end(self) -> Result<(), NotFixed> {
        Ok(())
    }
}

impl ser::SerializeStruct for Ser<'_> {
    type Ok = ();
    type Error = NotFixed;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), NotFixed> {
        v.serialize(Ser { out: self.out })
    }
    fn skip_field(&mut self, _: &'static str) -> Result<(), NotFixed> {
        not_fixed("a struct that skips a field")
    }
    fn end(self) -> Result<(), NotFixed> {
        Ok(())
    }
}

struct De<'a, 'b> {
    input: &'b mut &'a [u8],
}

impl De<'_, '_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], NotFixed> {
        match self.input.split_first_chunk::<N>() {
            Some((v, rest)) => {
                *self.input = rest;
                Ok(*v)
            }
            None => Err(NotFixed("a fixed-layout value is cut short".into())),
        }
    }
}

macro_rules! get {
    ($($f:ident $visit:ident $t:ty),*) => {$(
        fn $f<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, NotFixed> {
            v.$visit(<$t>::from_le_bytes(self.take()?))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'de, '_> {
    type Error = NotFixed;

    get!(deserialize_i8 visit_i8 i8, deserialize_i16 visit_i16 i16,
         deserialize_i32 visit_i32 i32, deserialize_i64 visit_i64 i64,
         deserialize_i128 visit_i128 i128, deserialize_u8 visit_u8 u8,
         deserialize_u16 visit_u16 u16, deserialize_u32 visit_u32 u32,
         deserialize_u64 visit_u64 u64, deserialize_u128 visit_u128 u128,
         deserialize_f32 visit_f32 f32, deserialize_f64 visit_f64 f64);

    fn deserialize_bool<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, NotFixed> {
        match self.take::<1>()? {
            [0] => v.visit_bool(false),
            [1] => v.visit_bool(true),
            [b] => Err(NotFixed(format!("{b} is not a bool"))),
        }
    }
    fn deserialize_char<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, NotFixed> {
        let n = u32::from_le_bytes(self.take()?);
        match char::from_u32(n) {
            Some(c) => v.visit_char(c),
            None => Err(NotFixed(format!("{n:#x} is not a char"))),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, NotFixed> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, NotFixed> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, NotFixed> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, NotFixed> {
        v.visit_seq(Seq {
            input: self.input,
            left: len,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, NotFixed> {
        self.deserialize_tuple(len, v)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, NotFixed> {
        self.deserialize_tuple(fields.len(), v)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("a self-describing value")
    }
    fn deserialize_str<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("a string")
    }
    fn deserialize_string<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("a string")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("a byte string")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("a byte string")
    }
    fn deserialize_option<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("an Option")
    }
    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("a sequence")
    }
    fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("a map")
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, NotFixed> {
        not_fixed("an enum")
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("an identifier")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NotFixed> {
        not_fixed("an ignored value")
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a tuple, struct or array.
struct Seq<'a, 'b> {
    input: &'b mut &'a [u8],
    left: usize,
}

impl<'de> SeqAccess<'de> for Seq<'de, '_> {
    type Error = NotFixed;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, NotFixed> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(De { input: self.input }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: f64,
        y: i32,
        on: bool,
        tag: [u8; 3],
    }

    fn round<T: Serialize + DeserializeOwned>(v: &T) -> T {
        let mut out = Vec::new();
        encode(v, &mut out).unwrap();
        decode(&out).unwrap()
    }

    #[test]
    fn plain_values_round_trip_at_their_size() {
        assert_eq!(round(&u64::MAX), u64::MAX);
        assert_eq!(round(&-3i8), -3);
        assert_eq!(round(&'é'), 'é');
        assert_eq!(round(&(1u16, 2.5f32, ())), (1, 2.5, ()));
        let p = Point {
            x: 1.5,
            y: -7,
            on: true,
            tag: *b"abc",
        };
        assert_eq!(round(&p), p);
        let mut out = Vec::new();
        encode(&p, &mut out).unwrap();
        assert_eq!(out.len(), 8 + 4 + 1 + 3);
    }

    #[test]
    fn values_without_a_fixed_layout_are_refused() {
        let mut out = Vec::new();
        assert!(encode(&"text", &mut out).is_err());
        assert!(encode(&vec![1u8], &mut out).is_err());
        assert!(encode(&Some(1u8), &mut out).is_err());
        assert!(encode(&Err::<u8, u8>(1), &mut out).is_err());
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode::<u64>(&[1, 2, 3]).is_err());
        assert!(decode::<u8>(&[1, 2]).is_err());
        assert!(decode::<bool>(&[2]).is_err());
        assert!(decode::<char>(&0xD800u32.to_le_bytes()).is_err());
        assert!(decode::<String>(&[]).is_err());
        assert!(values(&head(3, 2)).is_err());
        assert!(values(&[0, 1]).is_err());
        let mut part = head(2, 1).to_vec();
        part.extend_from_slice(&[5, 6]);
        let v: Vec<&[u8]> = values(&part).unwrap().collect();
        assert_eq!(v, vec![&[5u8][..], &[6u8][..]]);
    }
}
