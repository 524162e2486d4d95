//! The host's ends of a guest: its agent's channel read a bounded line at a time
//! ([`GuestLines`]) and the tail of its console ([`Console`]).

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::OwnedReadHalf;

/// The guest's side of the channel, read a line at a time, each line bounded: a guest that
/// sends an endless line is cut off, not buffered.
pub(super) struct GuestLines<R = BufReader<OwnedReadHalf>>(pub(super) R);

impl<R: tokio::io::AsyncBufRead + Unpin> GuestLines<R> {
    /// The next line (without its newline), None at the end of the channel; an error for a
    /// line longer than `most` bytes or one that is not UTF-8.
    pub(super) async fn next_line(&mut self, most: usize) -> Result<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.0)
            .take(most as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > most {
            bail!("the guest sent a line longer than {most} bytes");
        }
        Ok(Some(
            String::from_utf8(buf).context("the guest sent a line that is not UTF-8")?,
        ))
    }
}

/// How much of a guest's console is kept: its last 64 KiB.
const CONSOLE_KEPT: usize = 64 << 10;

/// The tail of a guest's console, read from qemu's output as it comes (so a guest that
/// floods its console neither fills a disk nor stalls on a full pipe).
#[derive(Clone, Default)]
pub(super) struct Console(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>);

impl Console {
    /// Drains `out` into a new console tail, in the background, until qemu closes it.
    pub(super) fn drain(out: Option<tokio::process::ChildStdout>) -> Console {
        let console = Console::default();
        if let Some(mut out) = out {
            let kept = console.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.push(&buf[..n]);
                }
            });
        }
        console
    }

    fn push(&self, bytes: &[u8]) {
        let mut q = self.0.lock().expect("console");
        q.extend(bytes);
        let over = q.len().saturating_sub(CONSOLE_KEPT);
        q.drain(..over);
    }

    fn text(&self) -> String {
        let q = self.0.lock().expect("console");
        String::from_utf8_lossy(&q.iter().copied().collect::<Vec<u8>>()).into_owned()
    }

    /// What the console says of a failure: its kernel panic line when there is one, else
    /// its last lines.
    pub(super) fn tail(&self) -> String {
        let text = self.text();
        if let Some(panic) = text.lines().find(|l| l.contains("Kernel panic")) {
            return format!("; its console says: {}", panic.trim());
        }
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        if tail.is_empty() {
            String::new()
        } else {
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("; its console ended: {}", tail.join(" | "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_keeps_its_last_64_kib() {
        let c = Console::default();
        for i in 0..100 {
            c.push(format!("line {i} {}\n", "x".repeat(2000)).as_bytes());
        }
        c.push(b"Kernel panic - not syncing: the end\n");
        let text = c.text();
        assert_eq!(text.len(), CONSOLE_KEPT);
        assert!(text.ends_with("the end\n"));
        assert_eq!(
            c.tail(),
            "; its console says: Kernel panic - not syncing: the end"
        );
    }

    #[tokio::test]
    async fn lines_from_the_guest_are_bounded() {
        let mut lines = GuestLines(&b"{\"a\":1}\nshort\nthis one is far too long\n"[..]);
        assert_eq!(lines.next_line(10).await.unwrap().unwrap(), "{\"a\":1}");
        assert_eq!(lines.next_line(10).await.unwrap().unwrap(), "short");
        let e = lines.next_line(10).await.unwrap_err();
        assert!(e.to_string().contains("longer than 10 bytes"), "{e}");
        let mut end = GuestLines(&b"exactly10!\nlast"[..]);
        assert_eq!(end.next_line(10).await.unwrap().unwrap(), "exactly10!");
        assert_eq!(end.next_line(10).await.unwrap().unwrap(), "last");
        assert_eq!(end.next_line(10).await.unwrap(), None);
    }
}
