//! Socket helpers of the fast path: writing without a future when the socket takes it all,
//! reading into a connection's reused buffer, copying a response body in each framing.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::h1;

/// Bytes read from a socket at a time; a connection's buffers grow to this and stay.
const READ_CHUNK: usize = 16 * 1024;

/// Writes all of `bytes` to `stream`. Most writes fit the socket's buffer at once: those are
/// one non-blocking `send`, without `write_all`'s future and readiness polling around it.
pub(super) async fn send_all(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    match stream.try_write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => stream.write_all(&bytes[n..]).await,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            stream.write_all(bytes).await
        }
        Err(error) => Err(error),
    }
}

/// Reads what `stream` has into the spare room of `buf` (growing it to [`READ_CHUNK`] when
/// full); 0 means the peer closed.
pub(super) async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

/// Copies `left` body bytes from `from` to `to` through `buf`. Bytes past them mean the
/// instance sent more than it announced: its connection is not reused (`Err`).
pub(super) async fn copy_length(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut left: u64,
    buf: &mut Vec<u8>,
) -> Result<(), ()> {
    while left > 0 {
        buf.clear();
        let n = read_more(from, buf).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        let take = (n as u64).min(left) as usize;
        to.write_all(&buf[..take]).await.map_err(|_| ())?;
        left -= take as u64;
        if take < n {
            return Err(());
        }
    }
    Ok(())
}

/// Copies a chunked body from `from` to `to` until `scanner` sees its end. `Ok(clean)`: it
/// ended; `clean` is false when bytes followed it (the connection is not reused).
pub(super) async fn copy_chunked(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut scanner: h1::ChunkedScanner,
    buf: &mut Vec<u8>,
) -> Result<bool, ()> {
    loop {
        buf.clear();
        let n = read_more(from, buf).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        match scanner.scan(&buf[..n]).map_err(|_| ())? {
            Some(end) => {
                to.write_all(&buf[..end]).await.map_err(|_| ())?;
                return Ok(end == n);
            }
            None => to.write_all(&buf[..n]).await.map_err(|_| ())?,
        }
    }
}

/// Copies from `from` to `to` until `from` closes.
pub(super) async fn copy_until_close(
    from: &mut TcpStream,
    to: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(), ()> {
    loop {
        buf.clear();
        match read_more(from, buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n]).await.map_err(|_| ())?,
            Err(_) => return Err(()),
        }
    }
}
