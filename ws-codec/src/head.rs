//! An HTTP/1.x request head (request line and headers), parsed from the bytes read so far.

/// Headers parsed per request; more is [`HeadError::TooLarge`].
pub const MAX_HEADERS: usize = 64;

/// An HTTP/1.x request's line and headers, owned; header names in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub query: String,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a head cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or a header value that is not UTF-8: 400.
    Malformed,
    /// More than [`MAX_HEADERS`] headers: 431.
    TooLarge,
}

/// Parses a complete head at the start of `buf`: `Ok(None)` while it is incomplete; on
/// success, the head and its length in bytes (what follows belongs to the next protocol).
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = request
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value).map_err(|_| HeadError::Malformed)?;
            Ok((h.name.to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect::<Result<_, HeadError>>()?;
    Ok(Some((
        RequestHead {
            method: request.method.unwrap_or_default().to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
        },
        len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_in_pieces_parses_once_complete() {
        let text = b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                     X-Twice: 1\r\nX-Twice: 2\r\n\r\nleftover";
        let end = text.len() - "leftover".len();
        for cut in 0..end {
            assert_eq!(parse_head(&text[..cut]), Ok(None), "cut at {cut}");
        }
        let (head, len) = parse_head(text).unwrap().unwrap();
        assert_eq!(len, end);
        assert_eq!(
            (
                head.method.as_str(),
                head.path.as_str(),
                head.query.as_str()
            ),
            ("GET", "/ws", "token=abc")
        );
        assert_eq!(head.header("upgrade"), Some("websocket"));
        assert_eq!(head.headers("x-twice").collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn garbage_and_header_floods_are_refused() {
        assert_eq!(
            parse_head(b"\x16\x03\x01 tls hello\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        let mut flood = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            flood.extend(format!("h{i}: v\r\n").as_bytes());
        }
        flood.extend(b"\r\n");
        assert_eq!(parse_head(&flood), Err(HeadError::TooLarge));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }
}
