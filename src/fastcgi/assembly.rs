//! Assembling a request from the records before its body: management
//! records, `FCGI_BEGIN_REQUEST`, the `FCGI_PARAMS` stream, an early
//! `FCGI_ABORT_REQUEST`. Pure: bytes in, a [`Begun`] request (or the
//! records to answer with) out.
//!
//! Apart from the request because it runs where the request does not: the
//! event loop feeds it whatever a socket had, a few bytes at a time if the
//! peer is slow, and no thread waits on a connection that has not sent a
//! whole request. Everything a request's parameters need is kept here
//! between reads, so that a connection costs its bytes, not a thread.

use super::record::{
    ABORT_REQUEST, BEGIN_REQUEST, BeginRequest, CANT_MPX_CONN, END_REQUEST, GET_VALUES,
    GET_VALUES_RESULT, HEADER_LEN, Header, Malformed, PARAMS, REQUEST_COMPLETE, RESPONDER,
    UNKNOWN_ROLE, UNKNOWN_TYPE, decode_params, encode_param, encode_record, end_request_body,
    unknown_type_body,
};
use crate::vars::Vars;

/// Most bytes of `PARAMS` one request may send (nginx sends a few KiB).
const MAX_PARAMS: usize = 1 << 20;

/// A request whose parameters are complete: its id, whether the
/// connection stays open after it, and its CGI variables.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Begun {
    pub(super) id: u16,
    pub(super) keep_conn: bool,
    pub(super) params: Vars,
}

/// The state between reads of one connection's next request.
#[derive(Debug, Default)]
pub(super) struct Assembly {
    /// The request begun, and its `FCGI_KEEP_CONN`.
    current: Option<(u16, bool)>,
    params: Vec<u8>,
}

impl Assembly {
    /// Whether a request has begun: bytes are owed, so the peer is not idle.
    pub(super) fn in_request(&self) -> bool {
        self.current.is_some()
    }

    /// Takes the whole records at the front of `pending` (leaving an
    /// incomplete one, and everything after a completed request's
    /// parameters, in it) until a request's parameters are complete.
    ///
    /// Records that need an answer of their own (`FCGI_GET_VALUES`, an
    /// unknown type, a second `FCGI_BEGIN_REQUEST`, a role other than the
    /// responder's, an abort before the body) get it appended to `replies`,
    /// for the caller to send. `max_conns` is what `FCGI_GET_VALUES` is told.
    pub(super) fn step(
        &mut self,
        pending: &mut Vec<u8>,
        replies: &mut Vec<u8>,
        max_conns: usize,
    ) -> Result<Option<Begun>, Malformed> {
        let mut at = 0;
        let outcome = loop {
            let Some((header, content, next)) = whole_record(&pending[at..])? else {
                break Ok(None);
            };
            at += next;
            match self.take(header, content, replies, max_conns) {
                Ok(None) => {}
                other => break other,
            }
        };
        pending.drain(..at);
        outcome
    }

    /// What a connection that ended now leaves: nothing, if it ended
    /// between requests; a malformed stream if it ended inside one.
    pub(super) fn closed(&self, pending: &[u8]) -> Result<(), Malformed> {
        if self.current.is_none() && pending.is_empty() {
            return Ok(());
        }
        Err(Malformed(
            "connection closed inside a request's parameters".into(),
        ))
    }

    fn take(
        &mut self,
        header: Header,
        content: &[u8],
        replies: &mut Vec<u8>,
        max_conns: usize,
    ) -> Result<Option<Begun>, Malformed> {
        match (header.kind, self.current) {
            (GET_VALUES, _) if header.id == 0 => replies.extend(get_values(max_conns, content)),
            (_, _) if header.id == 0 => {
                replies.extend(encode_record(
                    UNKNOWN_TYPE,
                    0,
                    &unknown_type_body(header.kind),
                ));
            }
            (BEGIN_REQUEST, None) => {
                let begin = BeginRequest::decode(content)?;
                if begin.role == RESPONDER {
                    self.current = Some((header.id, begin.keep_conn));
                } else {
                    replies.extend(end_request(header.id, UNKNOWN_ROLE));
                }
            }
            (BEGIN_REQUEST, Some(_)) => replies.extend(end_request(header.id, CANT_MPX_CONN)),
            (PARAMS, Some((id, keep_conn))) if header.id == id => {
                if content.is_empty() {
                    let params = decode_params(&self.params)
                        .ok_or_else(|| Malformed("malformed FCGI_PARAMS".into()))?;
                    *self = Assembly::default();
                    return Ok(Some(Begun {
                        id,
                        keep_conn,
                        params,
                    }));
                }
                self.params.extend_from_slice(content);
                if self.params.len() > MAX_PARAMS {
                    return Err(Malformed(format!(
                        "FCGI_PARAMS longer than {MAX_PARAMS} bytes"
                    )));
                }
            }
            (ABORT_REQUEST, Some((id, _))) if header.id == id => {
                replies.extend(end_request(id, REQUEST_COMPLETE));
                *self = Assembly::default();
            }
            // Records of a request already answered (a late abort; its
            // body was read to its end before this request began): they
            // need nothing.
            _ => {}
        }
        Ok(None)
    }
}

/// A whole record in a buffer: its header, its content, and where the next
/// record starts.
type Whole<'a> = (Header, &'a [u8], usize);

/// The first whole record of `bytes`; `None` while it is incomplete.
fn whole_record(bytes: &[u8]) -> Result<Option<Whole<'_>>, Malformed> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::decode(*head)?;
    let end = HEADER_LEN + header.length;
    let next = end + header.padding;
    if bytes.len() < next {
        return Ok(None);
    }
    Ok(Some((header, &bytes[HEADER_LEN..end], next)))
}

fn end_request(id: u16, protocol_status: u8) -> Vec<u8> {
    encode_record(END_REQUEST, id, &end_request_body(protocol_status))
}

/// Answers FCGI_GET_VALUES: one request per connection, and `max_conns`
/// connections.
fn get_values(max_conns: usize, query: &[u8]) -> Vec<u8> {
    let max_conns = max_conns.to_string();
    let mut answer = Vec::new();
    for (name, _) in decode_params(query).unwrap_or_default().iter() {
        let value = match name {
            "FCGI_MAX_CONNS" | "FCGI_MAX_REQS" => max_conns.as_str(),
            "FCGI_MPXS_CONNS" => "0",
            _ => continue,
        };
        encode_param(&mut answer, name, value);
    }
    encode_record(GET_VALUES_RESULT, 0, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::record::{KEEP_CONN, STDIN};

    fn begin(id: u16, role: u16, flags: u8) -> Vec<u8> {
        let [hi, lo] = role.to_be_bytes();
        encode_record(BEGIN_REQUEST, id, &[hi, lo, flags, 0, 0, 0, 0, 0])
    }

    fn params(id: u16, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut content = Vec::new();
        for (name, value) in pairs {
            encode_param(&mut content, name, value);
        }
        let mut bytes = encode_record(PARAMS, id, &content);
        bytes.extend(encode_record(PARAMS, id, &[]));
        bytes
    }

    fn request(id: u16) -> Vec<u8> {
        let mut bytes = begin(id, RESPONDER, KEEP_CONN);
        bytes.extend(params(id, &[("REQUEST_METHOD", "GET")]));
        bytes
    }

    fn expected(id: u16) -> Begun {
        Begun {
            id,
            keep_conn: true,
            params: [("REQUEST_METHOD", "GET")].into_iter().collect(),
        }
    }

    #[test]
    fn a_request_fed_one_byte_at_a_time_begins_once_its_params_end() {
        let mut stream = request(3);
        stream.extend(encode_record(STDIN, 3, b"body"));
        let mut assembly = Assembly::default();
        let (mut pending, mut replies) = (Vec::new(), Vec::new());
        let end_of_params = request(3).len();
        for (i, byte) in stream.iter().enumerate() {
            pending.push(*byte);
            let step = assembly.step(&mut pending, &mut replies, 4).unwrap();
            if i + 1 < end_of_params {
                assert_eq!(step, None, "begun early, at byte {i}");
                assert!(assembly.in_request() || i < 16);
            } else {
                assert_eq!(step, Some(expected(3)));
                break;
            }
        }
        assert!(replies.is_empty());
        assert!(pending.is_empty(), "nothing after the params yet");
        assert!(!assembly.in_request(), "the next request starts afresh");
    }

    #[test]
    fn bytes_after_the_params_stay_pending_for_the_body() {
        let mut pending = request(1);
        let body = encode_record(STDIN, 1, b"abc");
        pending.extend(&body);
        let mut assembly = Assembly::default();
        let begun = assembly.step(&mut pending, &mut Vec::new(), 4).unwrap();
        assert_eq!(begun, Some(expected(1)));
        assert_eq!(pending, body);
    }

    #[test]
    fn management_records_get_their_answers_and_the_request_still_begins() {
        let mut query = Vec::new();
        encode_param(&mut query, "FCGI_MAX_CONNS", "");
        encode_param(&mut query, "FCGI_MPXS_CONNS", "");
        let mut pending = encode_record(GET_VALUES, 0, &query);
        pending.extend(encode_record(42, 0, &[]));
        pending.extend(begin(9, 2, 0)); // the authorizer role: refused
        pending.extend(begin(1, RESPONDER, KEEP_CONN));
        pending.extend(begin(2, RESPONDER, 0)); // a second, multiplexed: refused
        pending.extend(params(1, &[("REQUEST_METHOD", "GET")]));
        let mut replies = Vec::new();
        let begun = Assembly::default()
            .step(&mut pending, &mut replies, 7)
            .unwrap();
        assert_eq!(begun, Some(expected(1)));
        let mut values = Vec::new();
        encode_param(&mut values, "FCGI_MAX_CONNS", "7");
        encode_param(&mut values, "FCGI_MPXS_CONNS", "0");
        let mut want = encode_record(GET_VALUES_RESULT, 0, &values);
        want.extend(encode_record(UNKNOWN_TYPE, 0, &unknown_type_body(42)));
        want.extend(end_request(9, UNKNOWN_ROLE));
        want.extend(end_request(2, CANT_MPX_CONN));
        assert_eq!(replies, want);
    }

    #[test]
    fn an_abort_before_the_body_ends_that_request_only() {
        let mut pending = begin(1, RESPONDER, KEEP_CONN);
        pending.extend(encode_record(ABORT_REQUEST, 1, &[]));
        let mut replies = Vec::new();
        let mut assembly = Assembly::default();
        assert_eq!(assembly.step(&mut pending, &mut replies, 4).unwrap(), None);
        assert_eq!(replies, end_request(1, REQUEST_COMPLETE));
        assert!(!assembly.in_request());
        pending.extend(request(2));
        assert_eq!(
            assembly.step(&mut pending, &mut replies, 4).unwrap(),
            Some(expected(2))
        );
    }

    #[test]
    fn malformed_streams_are_refused() {
        let mut bad_version = request(1);
        bad_version[0] = 2;
        let mut short_begin = encode_record(BEGIN_REQUEST, 1, &[0, 1]);
        short_begin.extend(params(1, &[]));
        let mut bad_params = begin(1, RESPONDER, 0);
        bad_params.extend(encode_record(PARAMS, 1, &[5]));
        bad_params.extend(encode_record(PARAMS, 1, &[]));
        let mut huge = begin(1, RESPONDER, 0);
        for _ in 0..=(MAX_PARAMS / 60_000) {
            huge.extend(encode_record(PARAMS, 1, &[0; 60_000]));
        }
        for (name, mut pending) in [
            ("version", bad_version),
            ("short begin", short_begin),
            ("params", bad_params),
            ("too long", huge),
        ] {
            let step = Assembly::default().step(&mut pending, &mut Vec::new(), 4);
            assert!(step.is_err(), "{name}: {step:?}");
        }
    }

    #[test]
    fn closing_between_requests_is_clean_and_inside_one_is_not() {
        let assembly = Assembly::default();
        assert_eq!(assembly.closed(&[]), Ok(()));
        assert!(assembly.closed(&[1, 1]).is_err(), "a cut header");
        let mut assembly = Assembly::default();
        let mut pending = begin(1, RESPONDER, 0);
        assembly.step(&mut pending, &mut Vec::new(), 4).unwrap();
        assert!(assembly.closed(&pending).is_err(), "inside the params");
    }
}
