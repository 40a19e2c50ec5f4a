//! Mutual challenge-response on every new connection. Each side sends a
//! greeting with a fresh nonce, then proves it holds the cookie with
//! HMAC-SHA256(cookie, role || client nonce || server nonce); the role
//! byte differs per direction so a proof cannot be reflected. The cookie
//! itself never crosses the wire, proofs are compared in constant time,
//! and the server proves itself only to a client that proved itself first.
//! Nothing else is read from a peer before both proofs check out.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const GREETING: &[u8; 8] = b"LCLUSTR1";
const NONCE: usize = 32;
const PROOF: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that opened the connection.
    Client,
    Server,
}

fn proof(cookie: &[u8], side: Side, client_nonce: &[u8], server_nonce: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie).expect("HMAC takes any key length");
    mac.update(match side {
        Side::Client => b"libcluster client",
        Side::Server => b"libcluster server",
    });
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac
}

/// Runs the handshake on a blocking stream, bounded by `timeout`.
pub fn handshake(stream: &mut TcpStream, cookie: &[u8], side: Side, timeout: Duration) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| Error::new(ErrorKind::Auth, format!("handshake {what}: {e}"));
    stream.set_read_timeout(Some(timeout)).map_err(|e| fail("setup", e))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| fail("setup", e))?;

    let mut mine = [0u8; NONCE];
    sys::random_bytes(&mut mine).map_err(|e| fail("nonce", e))?;
    let mut hello = Vec::with_capacity(GREETING.len() + NONCE);
    hello.extend_from_slice(GREETING);
    hello.extend_from_slice(&mine);
    stream.write_all(&hello).map_err(|e| fail("write", e))?;

    let mut theirs = [0u8; GREETING.len() + NONCE];
    stream.read_exact(&mut theirs).map_err(|e| fail("read", e))?;
    if &theirs[..GREETING.len()] != GREETING {
        return Err(Error::new(ErrorKind::Auth, "peer did not greet as a libcluster process"));
    }
    let theirs = &theirs[GREETING.len()..];
    let (client_nonce, server_nonce) = match side {
        Side::Client => (&mine[..], theirs),
        Side::Server => (theirs, &mine[..]),
    };
    let other = if side == Side::Client { Side::Server } else { Side::Client };

    // The client proves first; the server answers only after checking it,
    // so a stranger learns nothing computed with the cookie.
    let my_proof = proof(cookie, side, client_nonce, server_nonce).finalize().into_bytes();
    let check_theirs = |stream: &mut TcpStream| -> Result<()> {
        let mut their_proof = [0u8; PROOF];
        stream.read_exact(&mut their_proof).map_err(|e| fail("read", e))?;
        proof(cookie, other, client_nonce, server_nonce)
            .verify_slice(&their_proof)
            .map_err(|_| Error::new(ErrorKind::Auth, "peer failed to prove the cluster cookie"))
    };
    match side {
        Side::Client => {
            stream.write_all(&my_proof).map_err(|e| fail("write", e))?;
            check_theirs(stream)?;
        }
        Side::Server => {
            check_theirs(stream)?;
            stream.write_all(&my_proof).map_err(|e| fail("write", e))?;
        }
    }

    stream.set_read_timeout(None).map_err(|e| fail("setup", e))?;
    stream.set_write_timeout(None).map_err(|e| fail("setup", e))?;
    Ok(())
}

/// A fresh random cookie, as 64 hex characters.
pub fn random_cookie() -> Result<String> {
    let mut b = [0u8; 32];
    sys::random_bytes(&mut b).map_err(|e| Error::io("random cookie", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(client_cookie: &'static [u8], server_cookie: &'static [u8]) -> (Result<()>, Result<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            handshake(&mut s, server_cookie, Side::Server, Duration::from_secs(2))
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let r = handshake(&mut c, client_cookie, Side::Client, Duration::from_secs(2));
        drop(c);
        (r, t.join().unwrap())
    }

    #[test]
    fn same_cookie_passes_both_ways() {
        let (c, s) = pair(b"secret", b"secret");
        c.unwrap();
        s.unwrap();
    }

    #[test]
    fn wrong_cookie_fails_both_ways() {
        let (c, s) = pair(b"secret", b"other");
        assert_eq!(c.unwrap_err().kind, ErrorKind::Auth);
        assert_eq!(s.unwrap_err().kind, ErrorKind::Auth);
    }

    #[test]
    fn cookies_are_random_hex() {
        let a = random_cookie().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_cookie().unwrap());
    }
}
