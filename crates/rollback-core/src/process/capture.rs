//! The capped capture of a program's stdout or stderr.

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of a program's stdout or stderr is kept by default (64 KiB).
pub const OUTPUT_CAP: usize = 64 * 1024;

/// The last bytes of a stream (at most the cap), and how many came before them.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
    cap: usize,
}

impl Captured {
    /// The text without its trailing newlines, with a note first if the
    /// beginning was dropped.
    pub fn text(&self) -> String {
        let mut bytes = self.bytes.as_slice();
        if self.dropped > 0 {
            // Do not start in the middle of a UTF-8 sequence.
            while let [first, rest @ ..] = bytes {
                if (0x80..0xC0).contains(first) {
                    bytes = rest;
                } else {
                    break;
                }
            }
        }
        let body = String::from_utf8_lossy(bytes);
        let body = body.trim_end_matches(['\n', '\r']);
        if self.dropped > 0 {
            format!(
                "[output truncated: the first {} bytes were dropped, the last {} KiB are kept]\n{body}",
                self.dropped + (self.bytes.len() - bytes.len()),
                self.cap / 1024
            )
        } else {
            body.to_string()
        }
    }

    /// The kept bytes as they were written.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the beginning was dropped to stay within the cap.
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }
}

/// Reads `reader` to its end, keeping the last `cap` bytes.
pub(crate) async fn read_tail<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
) -> std::io::Result<Captured> {
    let mut bytes = Vec::new();
    let mut dropped = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        // Trim in batches so that a chatty program costs no quadratic copying.
        if bytes.len() > 2 * cap {
            let excess = bytes.len() - cap;
            bytes.drain(..excess);
            dropped += excess;
        }
    }
    if bytes.len() > cap {
        let excess = bytes.len() - cap;
        bytes.drain(..excess);
        dropped += excess;
    }
    Ok(Captured {
        bytes,
        dropped,
        cap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_tail_and_says_how_much_was_dropped() {
        let text: String = (0..3000)
            .map(|i| format!("line {i} of the output\n"))
            .collect();
        let captured = read_tail(text.as_bytes(), 1024).await.unwrap();
        assert!(captured.truncated());
        let shown = captured.text();
        assert!(
            shown.starts_with("[output truncated: the first "),
            "{shown}"
        );
        assert!(shown.ends_with("line 2999 of the output"));
        assert!(captured.bytes().len() <= 1024);
    }

    #[tokio::test]
    async fn never_starts_inside_a_character() {
        let text = "é".repeat(2000);
        let captured = read_tail(text.as_bytes(), 1001).await.unwrap();
        assert!(!captured.text().contains('\u{fffd}'));
    }
}
