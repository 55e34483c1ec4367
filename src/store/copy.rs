//! PostgreSQL's binary COPY format, written directly: the rows of a batch are encoded into one
//! buffer and sent in one `COPY ... FROM STDIN BINARY`.

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const TEXT_OID: i32 = 25;

pub struct CopyBuf {
    buf: BytesMut,
}

impl CopyBuf {
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(bytes + 32);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        CopyBuf { buf }
    }

    pub fn row(&mut self, fields: i16) {
        self.buf.put_i16(fields);
    }

    pub fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    pub fn i32(&mut self, v: i32) {
        self.buf.put_i32(4);
        self.buf.put_i32(v);
    }

    pub fn i64(&mut self, v: i64) {
        self.buf.put_i32(8);
        self.buf.put_i64(v);
    }

    pub fn f64(&mut self, v: f64) {
        self.buf.put_i32(8);
        self.buf.put_f64(v);
    }

    pub fn f32(&mut self, v: f32) {
        self.buf.put_i32(4);
        self.buf.put_f32(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.put_i32(1);
        self.buf.put_u8(v.into());
    }

    pub fn timestamptz(&mut self, t: DateTime<Utc>) {
        self.i64(t.timestamp_micros() - PG_EPOCH_OFFSET_US);
    }

    pub fn opt_f32(&mut self, v: Option<f32>) {
        match v {
            Some(v) => self.f32(v),
            None => self.null(),
        }
    }

    pub fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.f64(v),
            None => self.null(),
        }
    }

    pub fn opt_bool(&mut self, v: Option<bool>) {
        match v {
            Some(v) => self.bool(v),
            None => self.null(),
        }
    }

    /// A one-dimensional `text[]`, NULL when empty.
    pub fn text_array(&mut self, items: &[String]) {
        if items.is_empty() {
            return self.null();
        }
        let len: usize = 20 + items.iter().map(|s| 4 + s.len()).sum::<usize>();
        self.buf.put_i32(len as i32);
        self.buf.put_i32(1); // dimensions
        self.buf.put_i32(0); // no NULL elements
        self.buf.put_i32(TEXT_OID);
        self.buf.put_i32(items.len() as i32);
        self.buf.put_i32(1); // lower bound
        for s in items {
            self.buf.put_i32(s.len() as i32);
            self.buf.put_slice(s.as_bytes());
        }
    }

    /// `jsonb` from an already-serialised JSON text.
    pub fn jsonb(&mut self, json: &[u8]) {
        self.buf.put_i32(json.len() as i32 + 1);
        self.buf.put_u8(1); // jsonb version
        self.buf.put_slice(json);
    }

    pub fn finish(mut self) -> bytes::Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}
