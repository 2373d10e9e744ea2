//! Arrow IPC streams from bytes that arrive in pieces (an HTTP body), decoded as they come.
//!
//! A small framer cuts the byte stream into whole IPC messages first, checking each message's declared sizes
//! against the limit *before* anything is buffered for it, so a client cannot make us allocate what it only
//! claims to send. Whole messages then go to arrow-ipc's `StreamDecoder`. The output is the ingest core's
//! [`Incoming`]: the schema once, then batches. Decoder panics (arrow-ipc has some on malformed input) are
//! caught and reported as bad input. Nothing here knows HTTP or DuckDB.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};

use arrow::buffer::Buffer;
use arrow::ipc::reader::StreamDecoder;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::ingest::{Incoming, IngestError};

const CONTINUATION: u32 = 0xFFFF_FFFF;

/// Cuts a byte stream into whole IPC messages (prefix + metadata + body).
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max_message: usize,
    ended: bool,
}

impl Framer {
    pub fn new(max_message: usize) -> Framer {
        Framer { buf: BytesMut::new(), max_message, ended: false }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), IngestError> {
        if self.ended && !bytes.is_empty() {
            return Err(IngestError::BadInput("invalid Arrow IPC stream: data after the end-of-stream marker".into()));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole message, if the buffer holds one.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, IngestError> {
        if self.ended || self.buf.len() < 4 {
            return Ok(None);
        }
        let first = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let (prefix, len) = if first == CONTINUATION {
            if self.buf.len() < 8 {
                return Ok(None);
            }
            (8, u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize)
        } else {
            (4, first as usize)
        };
        if len == 0 {
            self.ended = true;
            self.buf.advance(prefix);
            if !self.buf.is_empty() {
                return Err(IngestError::BadInput("invalid Arrow IPC stream: data after the end-of-stream marker".into()));
            }
            return Ok(None);
        }
        if len > self.max_message {
            return Err(too_large(len, self.max_message));
        }
        if self.buf.len() < prefix + len {
            return Ok(None);
        }
        let message = arrow::ipc::root_as_message(&self.buf[prefix..prefix + len])
            .map_err(|e| IngestError::BadInput(format!("invalid Arrow IPC data: the message header does not parse: {e}")))?;
        let body = usize::try_from(message.bodyLength())
            .map_err(|_| IngestError::BadInput("invalid Arrow IPC data: negative body length".into()))?;
        if body > self.max_message.saturating_sub(len) {
            return Err(too_large(len.saturating_add(body), self.max_message));
        }
        let total = prefix + len + body;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total).freeze()))
    }

    /// Whether the input may end here: at a message boundary (with or without the end-of-stream marker).
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty()
    }
}

fn too_large(size: usize, max: usize) -> IngestError {
    IngestError::TooLarge(format!("an Arrow IPC message of {size} bytes is over the listener's limit of {max} bytes"))
}

struct State<S> {
    input: S,
    framer: Framer,
    decoder: StreamDecoder,
    schema_sent: bool,
    pending: VecDeque<Incoming>,
    done: bool,
}

fn decode_message<S>(state: &mut State<S>, message: Bytes) -> Result<(), IngestError> {
    let mut buffer = Buffer::from(message);
    let decoded = catch_unwind(AssertUnwindSafe(|| state.decoder.decode(&mut buffer)));
    let batch = match decoded {
        Ok(Ok(batch)) => batch,
        Ok(Err(e)) => return Err(IngestError::BadInput(format!("invalid Arrow IPC data: {e}"))),
        Err(p) => return Err(IngestError::BadInput(format!("invalid Arrow IPC data: {}", crate::ffi::panic_message(p.as_ref())))),
    };
    if !state.schema_sent {
        if let Some(schema) = state.decoder.schema() {
            state.schema_sent = true;
            state.pending.push_back(Incoming::Schema(schema));
        }
    }
    if let Some(batch) = batch {
        state.pending.push_back(Incoming::Batch(batch));
    }
    Ok(())
}

/// Decodes an Arrow IPC stream from byte chunks. Input errors pass through as they are.
pub fn ipc_stream<S>(input: S, max_message: usize) -> impl Stream<Item = Result<Incoming, IngestError>> + Send + Unpin
where
    S: Stream<Item = Result<Bytes, IngestError>> + Send + Unpin,
{
    let state = State {
        input,
        framer: Framer::new(max_message),
        decoder: StreamDecoder::new(),
        schema_sent: false,
        pending: VecDeque::new(),
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.pending.pop_front() {
                return Some((Ok(item), state));
            }
            if state.done {
                return None;
            }
            match state.framer.next_message() {
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
                Ok(Some(message)) => {
                    if let Err(e) = decode_message(&mut state, message) {
                        state.done = true;
                        return Some((Err(e), state));
                    }
                    continue;
                }
                Ok(None) => {}
            }
            match state.input.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = state.framer.push(&chunk) {
                        state.done = true;
                        return Some((Err(e), state));
                    }
                }
                Some(Err(e)) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
                None => {
                    state.done = true;
                    if !state.framer.at_boundary() {
                        return Some((Err(IngestError::BadInput("invalid Arrow IPC stream: the body ends in the middle of a message".into())), state));
                    }
                    if !state.schema_sent {
                        return Some((Err(IngestError::BadInput("the body holds no Arrow IPC stream (no schema message)".into())), state));
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::StreamWriter;
    use std::sync::Arc;

    fn ipc(rows: i64, batches: usize) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
        for _ in 0..batches {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from_iter_values(0..rows)), Arc::new(StringArray::from_iter_values((0..rows).map(|i| i.to_string())))],
            )
            .unwrap();
            w.write(&b).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        out
    }

    async fn collect(chunks: Vec<Vec<u8>>, max: usize) -> Vec<Result<Incoming, IngestError>> {
        let input = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
        ipc_stream(input, max).collect().await
    }

    fn rows(items: &[Result<Incoming, IngestError>]) -> (usize, usize) {
        let mut schemas = 0;
        let mut rows = 0;
        for i in items {
            match i {
                Ok(Incoming::Schema(_)) => schemas += 1,
                Ok(Incoming::Batch(b)) => rows += b.num_rows(),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        (schemas, rows)
    }

    #[tokio::test]
    async fn decodes_across_any_chunking() {
        let bytes = ipc(100, 3);
        for size in [1, 7, 64, 1000, bytes.len()] {
            let chunks = bytes.chunks(size).map(|c| c.to_vec()).collect();
            assert_eq!(rows(&collect(chunks, 1 << 20).await), (1, 300), "chunk size {size}");
        }
    }

    #[tokio::test]
    async fn a_cut_body_is_an_error_not_a_short_stream() {
        let bytes = ipc(100, 3);
        let cut = bytes[..bytes.len() - 40].to_vec();
        let items = collect(vec![cut], 1 << 20).await;
        let err = items.into_iter().find_map(|i| i.err()).expect("an error");
        assert!(err.to_string().contains("ends in the middle of a message"), "{err}");
    }

    #[tokio::test]
    async fn declared_sizes_over_the_limit_are_refused_before_buffering() {
        let bytes = ipc(10_000, 1);
        let items = collect(vec![bytes], 4096).await;
        let err = items.into_iter().find_map(|i| i.err()).expect("an error");
        assert!(matches!(err, IngestError::TooLarge(_)), "{err:?}");
        // A header that claims 2 GiB is refused from its first 8 bytes.
        let mut framer = Framer::new(1 << 20);
        framer.push(&[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x80]).unwrap();
        assert!(matches!(framer.next_message(), Err(IngestError::TooLarge(_))));
    }

    #[tokio::test]
    async fn garbage_and_empty_bodies_are_bad_input() {
        let items = collect(vec![b"definitely not arrow, but long enough".to_vec()], 1 << 20).await;
        assert!(items.iter().any(|i| matches!(i, Err(IngestError::BadInput(_)) | Err(IngestError::TooLarge(_)))));
        let items = collect(vec![], 1 << 20).await;
        assert!(matches!(&items[..], [Err(IngestError::BadInput(m))] if m.contains("no schema")));
    }
}
