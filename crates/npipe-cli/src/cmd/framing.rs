//! How messages are told apart on a byte stream (standard input and
//! output, a command's pipes): `--framing line|nul|length|raw`, shared by
//! `npipe client` and `npipe serve --exec/--stdio`. No I/O here.

/// How messages are told apart on a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// One message per line; the newline is not part of it (anything else,
    /// `\r` included, is)
    Line,
    /// Messages end with a NUL byte
    Nul,
    /// Each message is its length (4 bytes, little-endian) and its bytes
    Length,
    /// Each read of input is one message; messages are written as they are
    Raw,
}

/// The most a `--framing length` prefix may announce: a whole message is
/// held in memory.
pub const FRAME_MAX: usize = 256 << 20;

impl Framing {
    /// Takes the next whole message off the front of `pending`; at the end
    /// of input (`end`) what is left is the last message. `searched` is how
    /// much of `pending` is known to hold no delimiter, so that a long line
    /// arriving in many chunks is scanned once, not once per chunk.
    pub fn take(
        self,
        pending: &mut Vec<u8>,
        searched: &mut usize,
        end: bool,
    ) -> Result<Option<Vec<u8>>, String> {
        let cut = |at: usize, skip: usize, pending: &mut Vec<u8>| {
            let mut msg: Vec<u8> = pending.drain(..at + skip).collect();
            msg.truncate(at);
            msg
        };
        match self {
            Framing::Line | Framing::Nul => {
                let delimiter = if self == Framing::Line { b'\n' } else { 0 };
                let from = (*searched).min(pending.len());
                if let Some(at) = pending[from..].iter().position(|&b| b == delimiter) {
                    *searched = 0;
                    return Ok(Some(cut(from + at, 1, pending)));
                }
                *searched = pending.len();
                Ok((end && !pending.is_empty()).then(|| {
                    *searched = 0;
                    std::mem::take(pending)
                }))
            }
            Framing::Length => {
                let Some(prefix) = pending.first_chunk::<4>() else {
                    return match end && !pending.is_empty() {
                        true => Err(truncated()),
                        false => Ok(None),
                    };
                };
                let len = u32::from_le_bytes(*prefix) as usize;
                if len > FRAME_MAX {
                    return Err(format!(
                        "a --framing length prefix announces {len} bytes, over 256 MiB"
                    ));
                }
                if pending.len() < 4 + len {
                    return if end { Err(truncated()) } else { Ok(None) };
                }
                pending.drain(..4);
                Ok(Some(cut(len, 0, pending)))
            }
            Framing::Raw => Ok((!pending.is_empty()).then(|| std::mem::take(pending))),
        }
    }

    /// One message as the framing puts it on a stream.
    pub fn frame(self, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 4);
        match self {
            Framing::Line => {
                out.extend_from_slice(msg);
                out.push(b'\n');
            }
            Framing::Nul => {
                out.extend_from_slice(msg);
                out.push(0);
            }
            Framing::Length => {
                out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                out.extend_from_slice(msg);
            }
            Framing::Raw => out.extend_from_slice(msg),
        }
        out
    }
}

fn truncated() -> String {
    "the input ended inside a --framing length message".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` as input arrives and takes every message out.
    fn split(framing: Framing, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let (mut pending, mut searched, mut out) = (Vec::new(), 0, Vec::new());
        for (i, chunk) in chunks.iter().enumerate() {
            pending.extend_from_slice(chunk);
            let end = i + 1 == chunks.len();
            while let Some(msg) = framing.take(&mut pending, &mut searched, end).unwrap() {
                out.push(msg);
            }
        }
        out
    }

    #[test]
    fn framings_split_input_however_it_arrives() {
        let lines = split(Framing::Line, &[b"ab", b"c\r\nd", b"e\n\nlast"]);
        assert_eq!(
            lines,
            vec![
                b"abc\r".to_vec(),
                b"de".to_vec(),
                b"".to_vec(),
                b"last".to_vec()
            ]
        );
        let nul = split(Framing::Nul, &[b"a\nb\0", b"c\0"]);
        assert_eq!(nul, vec![b"a\nb".to_vec(), b"c".to_vec()]);
        let mut framed = 3u32.to_le_bytes().to_vec();
        framed.extend_from_slice(b"xyz");
        framed.extend_from_slice(&0u32.to_le_bytes());
        let (a, b) = framed.split_at(5);
        assert_eq!(
            split(Framing::Length, &[a, b]),
            vec![b"xyz".to_vec(), vec![]]
        );
        let (mut pending, mut searched) = (framed[..5].to_vec(), 0);
        assert!(
            Framing::Length
                .take(&mut pending, &mut searched, true)
                .is_err(),
            "truncated"
        );
    }

    /// A long line in many chunks: each byte is looked at once (the search
    /// goes on from where it stopped), and the line comes out whole.
    #[test]
    fn a_long_line_is_scanned_once() {
        let chunk = vec![b'x'; 4096];
        let mut chunks: Vec<&[u8]> = vec![&chunk; 64];
        chunks.push(b"\n");
        let lines = split(Framing::Line, &chunks);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), 4096 * 64);
    }
}
