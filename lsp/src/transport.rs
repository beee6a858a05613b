//! Content-Length framed JSON-RPC over any byte streams (stdin/stdout for
//! `avap lsp`), into an `lsp_server::Connection`.
//!
//! lsp-server's own stdio transport stops reading at the first malformed
//! message, which leaves the editor with a dead server. This one answers
//! what it cannot use with a JSON-RPC error and reads on: invalid JSON is
//! -32700 (parse error, id `null`), a JSON value that is no LSP message is
//! -32600 (invalid request, with the id when there is one), a message
//! without a usable `Content-Length` or larger than [`MAX_MESSAGE_BYTES`]
//! is skipped with -32600. Only the end of the input ends it.

use std::io::{self, BufRead, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use lsp_server::{Connection, ErrorCode, Message};
use serde_json::Value;

/// The largest message read (a document is sent whole on open): larger
/// ones are skipped and answered with an error.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A header line longer than this is not a header.
const MAX_HEADER_LINE: usize = 8 << 10;

/// The reading and writing threads of a [`framed`] connection.
#[derive(Debug)]
pub struct IoThreads {
    reader: JoinHandle<io::Result<()>>,
    writer: JoinHandle<io::Result<()>>,
}

impl IoThreads {
    /// Wait until every message sent on the connection (dropped by now) is
    /// written. The reader is not waited for: it may be blocked on an input
    /// nobody closes, and it stops at `exit` or the end of the input anyway.
    pub fn finish_writing(self) -> io::Result<()> {
        drop(self.reader);
        self.writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")))
    }

    /// Wait for both threads (for tests, whose input ends).
    pub fn join(self) -> io::Result<()> {
        let read = self
            .reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the reader thread panicked")));
        let written = self
            .writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
        read.and(written)
    }
}

/// A connection reading framed messages from `input` and writing them to
/// `output`, each on a thread of its own.
pub fn framed<R, W>(input: R, output: W) -> (Connection, IoThreads)
where
    R: BufRead + Send + 'static,
    W: Write + Send + 'static,
{
    let output = Arc::new(Mutex::new(output));
    let (to_client, outgoing) = crossbeam_channel::unbounded::<Message>();
    let (incoming, from_client) = crossbeam_channel::unbounded::<Message>();
    let writer_output = Arc::clone(&output);
    let writer = std::thread::Builder::new()
        .name("avap-lsp-writer".into())
        .spawn(move || {
            for message in outgoing {
                let mut out = writer_output.lock().unwrap_or_else(PoisonError::into_inner);
                message.write(&mut *out)?;
            }
            Ok(())
        })
        .expect("spawn the LSP writer thread");
    let reader = std::thread::Builder::new()
        .name("avap-lsp-reader".into())
        .spawn(move || read_loop(input, &incoming, &output))
        .expect("spawn the LSP reader thread");
    (
        Connection {
            sender: to_client,
            receiver: from_client,
        },
        IoThreads { reader, writer },
    )
}

fn read_loop<R: BufRead, W: Write>(mut input: R, incoming: &Sender<Message>, output: &Mutex<W>) -> io::Result<()> {
    loop {
        let body = match read_frame(&mut input)? {
            None => return Ok(()),
            Some(Frame::Malformed(why)) => {
                reply_error(output, &Value::Null, ErrorCode::InvalidRequest, &why)?;
                continue;
            }
            Some(Frame::Body(body)) => body,
        };
        match decode(&body) {
            Ok(message) => {
                let exit = matches!(&message, Message::Notification(n) if n.method == "exit");
                if incoming.send(message).is_err() || exit {
                    return Ok(());
                }
            }
            Err((id, code, why)) => reply_error(output, &id, code, &why)?,
        }
    }
}

enum Frame {
    Body(Vec<u8>),
    /// Skipped; the reason is the error's message.
    Malformed(String),
}

/// One `Content-Length: N` header block and its body. `None` at the end of
/// the input (also in the middle of a message: nothing is left to answer).
fn read_frame(input: &mut impl BufRead) -> io::Result<Option<Frame>> {
    let mut length: Option<Result<usize, String>> = None;
    let mut headers = 0;
    loop {
        let Some(line) = read_header_line(input)? else {
            return Ok(None);
        };
        let line = match line {
            Ok(line) => line,
            Err(why) => return Ok(Some(Frame::Malformed(why))),
        };
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if headers == 0 {
                continue; // blank lines between messages
            }
            break;
        }
        headers += 1;
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("invalid Content-Length header `{}`", value.trim())),
            );
        }
    }
    let length = match length {
        None => {
            return Ok(Some(Frame::Malformed(
                "a message without a Content-Length header".into(),
            )));
        }
        Some(Err(why)) => return Ok(Some(Frame::Malformed(why))),
        Some(Ok(n)) => n,
    };
    if length > MAX_MESSAGE_BYTES {
        let skipped = io::copy(&mut input.take(length as u64), &mut io::sink())?;
        if skipped < length as u64 {
            return Ok(None);
        }
        return Ok(Some(Frame::Malformed(format!(
            "a message of {length} bytes, larger than the {MAX_MESSAGE_BYTES} bytes accepted"
        ))));
    }
    let mut body = vec![0; length];
    match input.read_exact(&mut body) {
        Ok(()) => Ok(Some(Frame::Body(body))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// A header line (lossy UTF-8), or why it is not one (too long: the rest
/// of it is skipped). `None` at the end of the input.
fn read_header_line(input: &mut impl BufRead) -> io::Result<Option<Result<String, String>>> {
    let mut line = Vec::new();
    let n = input.take(MAX_HEADER_LINE as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.ends_with(b"\n") {
        return Ok(Some(Ok(String::from_utf8_lossy(&line).into_owned())));
    }
    if n < MAX_HEADER_LINE {
        return Ok(None); // the input ended inside the line
    }
    // Skip to the end of the overlong line.
    loop {
        let mut rest = Vec::new();
        let n = input.take(MAX_HEADER_LINE as u64).read_until(b'\n', &mut rest)?;
        if n == 0 {
            return Ok(None);
        }
        if rest.ends_with(b"\n") {
            return Ok(Some(Err(format!("a header line longer than {MAX_HEADER_LINE} bytes"))));
        }
    }
}

/// A message, or the error to answer: (id to answer with, code, message).
fn decode(body: &[u8]) -> Result<Message, (Value, ErrorCode, String)> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        (
            Value::Null,
            ErrorCode::ParseError,
            format!("the message is not JSON: {e}"),
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err((
            Value::Null,
            ErrorCode::InvalidRequest,
            "a message must be a JSON object (batches are not supported)".into(),
        ));
    };
    let id = object.get("id").cloned().unwrap_or(Value::Null);
    let usable_id = match &id {
        Value::Null | Value::String(_) => true,
        Value::Number(n) => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        _ => false,
    };
    if !usable_id {
        return Err((
            id,
            ErrorCode::InvalidRequest,
            "`id` must be a string or an integer (32 bits)".into(),
        ));
    }
    if !object.get("method").is_none_or(Value::is_string) {
        return Err((id, ErrorCode::InvalidRequest, "`method` must be a string".into()));
    }
    serde_json::from_value(value).map_err(|e| (id, ErrorCode::InvalidRequest, format!("not a JSON-RPC message: {e}")))
}

fn reply_error<W: Write>(output: &Mutex<W>, id: &Value, code: ErrorCode, message: &str) -> io::Result<()> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code as i32, "message": message },
    })
    .to_string();
    let mut out = output.lock().unwrap_or_else(PoisonError::into_inner);
    write!(out, "Content-Length: {}\r\n\r\n{body}", body.len())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    /// Feed `input`, return what was written back and what reached the server.
    fn exchange(input: String) -> (String, Vec<Message>) {
        let out = SharedBuffer::default();
        let (connection, threads) = framed(io::Cursor::new(input.into_bytes()), out.clone());
        let received: Vec<Message> = connection.receiver.iter().collect();
        drop(connection);
        threads.join().unwrap();
        let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (written, received)
    }

    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn malformed_messages_get_errors_and_reading_goes_on() {
        let good = r#"{"jsonrpc":"2.0","id":7,"method":"shutdown"}"#;
        let input = [
            frame("{not json"),
            frame("[1, 2]"),
            frame(r#"{"jsonrpc":"2.0","id":1.5,"method":"hover"}"#),
            frame(r#"{"jsonrpc":"2.0","id":3,"method":42}"#),
            "Content-Type: text/plain\r\n\r\n".to_owned(),
            "Content-Length: nope\r\n\r\n".to_owned(),
            frame(good),
        ]
        .concat();
        let (written, received) = exchange(input);
        assert_eq!(received.len(), 1, "{received:?}");
        assert!(matches!(&received[0], Message::Request(r) if r.method == "shutdown"));
        let answers: Vec<(Value, i64, String)> = frames(&written)
            .into_iter()
            .map(|v| {
                let error = &v["error"];
                (
                    v["id"].clone(),
                    error["code"].as_i64().unwrap(),
                    error["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected: [(Value, i64, &str); 6] = [
            (Value::Null, -32700, "the message is not JSON"),
            (Value::Null, -32600, "a message must be a JSON object"),
            (serde_json::json!(1.5), -32600, "`id` must be a string or an integer"),
            (serde_json::json!(3), -32600, "`method` must be a string"),
            (Value::Null, -32600, "a message without a Content-Length header"),
            (Value::Null, -32600, "invalid Content-Length header `nope`"),
        ];
        assert_eq!(answers.len(), expected.len(), "{answers:?}");
        for ((id, code, message), (want_id, want_code, want_message)) in answers.iter().zip(expected) {
            assert_eq!((id, *code), (&want_id, want_code));
            assert!(message.starts_with(want_message), "{message}");
        }
    }

    /// The JSON bodies of the frames in `written`.
    fn frames(mut written: &str) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(rest) = written.strip_prefix("Content-Length: ") {
            let (length, rest) = rest.split_once("\r\n\r\n").unwrap();
            let length: usize = length.parse().unwrap();
            out.push(serde_json::from_str(&rest[..length]).unwrap());
            written = &rest[length..];
        }
        assert!(written.is_empty(), "unframed output: {written}");
        out
    }

    #[test]
    fn oversized_and_truncated_messages() {
        let huge = format!("Content-Length: {}\r\n\r\n", MAX_MESSAGE_BYTES + 1);
        let (written, received) = exchange(huge);
        assert!(received.is_empty());
        assert!(written.is_empty(), "the input ended inside the message: {written}");
        let (_, received) = exchange("Content-Length: 50\r\n\r\n{\"jsonrpc\"".to_owned());
        assert!(received.is_empty());
        let long_header = format!("X-{}\r\n\r\n", "a".repeat(3 * MAX_HEADER_LINE));
        let (written, _) = exchange(long_header);
        assert!(written.contains("header line longer than"), "{written}");
    }

    #[test]
    fn reading_stops_after_exit() {
        let input = [
            frame(r#"{"jsonrpc":"2.0","method":"exit"}"#),
            frame(r#"{"jsonrpc":"2.0","id":1,"method":"shutdown"}"#),
        ]
        .concat();
        let (_, received) = exchange(input);
        assert_eq!(received.len(), 1);
    }
}
