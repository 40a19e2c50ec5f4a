//! TLS under a connection, for connections that cross hosts.
//!
//! Keys: every member derives the same Ed25519 key from the cookie
//! (HMAC-SHA256(cookie, label) as the seed) and makes the same
//! self-signed certificate from it, so nothing new is handed to workers
//! and only holders of the cookie can complete a handshake. Both ends
//! present that certificate (mutual TLS 1.3) and each accepts exactly
//! it: no certificate authority, host names or clock enter.
//!
//! Whether a connection uses TLS is agreed in the authentication
//! handshake (`auth.rs`): either side asking is enough. The client then
//! completes the TLS handshake before its first frame
//! (`Session::client`); the server completes it in the reads of its
//! first frame, on the admission thread, without blocking.
//!
//! A `Session` sits under `Conn`: reads return plaintext, writes take
//! plaintext and write records to the socket without ever waiting;
//! ciphertext the socket did not take waits inside (`pending_out`) as a
//! plain connection's backlog does. The parts of one write (a frame's
//! header, meta and payload) go out as one record in one write. The
//! socket is read without the session's lock (a reader spinning on an
//! empty socket never holds up a writer); the lock is held for the crypto
//! of what arrived or of at most `CHUNK` bytes written. Ciphertext read
//! but not yet taken by rustls (`staged`) and plaintext not yet read out
//! (`plain_waiting`) are invisible to epoll: `Conn` asks `buffered`.

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName, ServerConfig, ServerConnection, SignatureScheme};
use std::io::{self, Read, Write};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Plaintext encrypted per step of a write (and the most ciphertext left
/// waiting inside a session).
const CHUNK: usize = 256 * 1024;
/// The label of the key derivation (a change of it is a protocol change).
const KEY_LABEL: &[u8] = b"libcluster tls key v1";
/// The name the certificate carries; nobody checks it.
const NAME: &str = "libcluster";
/// A TLS record of type handshake: how every TLS client starts.
const HANDSHAKE_RECORD: u8 = 0x16;

/// When connections use TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum TlsMode {
    /// Never asked for (a peer may still ask).
    #[default]
    Off,
    /// Connections that are not on the loopback interface.
    CrossHost,
    /// Every connection, loopback too (tests, or a machine shared with
    /// untrusted users).
    Always,
}

impl TlsMode {
    /// From `LIBCLUSTER_TLS`: `off`, `on` / `cross-host`, `always`.
    pub fn parse(v: &str) -> Option<TlsMode> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "off" | "no" | "false" => Some(TlsMode::Off),
            "1" | "on" | "yes" | "true" | "cross-host" | "cross_host" => Some(TlsMode::CrossHost),
            "always" | "all" => Some(TlsMode::Always),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::CrossHost => "cross-host",
            TlsMode::Always => "always",
        }
    }

    /// Whether a connection with `peer` (the other end's address) wants TLS.
    pub fn wants(self, peer: Option<std::net::IpAddr>) -> bool {
        match self {
            TlsMode::Off => false,
            TlsMode::Always => true,
            TlsMode::CrossHost => !peer.is_some_and(|a| a.is_loopback()),
        }
    }
}

/// The cluster's TLS identity, derived from the cookie.
pub struct Keys {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tls::Keys")
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Auth, format!("TLS {what}: {e}"))
}

/// The PKCS#8 (v1) encoding of an Ed25519 private key from its seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    [&PREFIX[..], seed].concat()
}

fn provider() -> Arc<CryptoProvider> {
    let mut p = crypto::ring::default_provider();
    // AES-128-GCM first: the fastest suite with AES instructions.
    p.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// The certificate of `seed`'s key: the same bytes on every member
/// (Ed25519 signatures are deterministic, every field is fixed).
fn certificate(pkcs8: &[u8]) -> Result<CertificateDer<'static>> {
    let key = rcgen::KeyPair::try_from(pkcs8).map_err(|e| tls_err("key", e))?;
    let mut params = rcgen::CertificateParams::new(vec![NAME.to_string()]).map_err(|e| tls_err("certificate", e))?;
    params.serial_number = Some(rcgen::SerialNumber::from(vec![1u8]));
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, NAME);
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).map_err(|e| tls_err("certificate", e))?;
    Ok(cert.der().clone())
}

impl Keys {
    /// The identity of the cluster whose cookie is `cookie`.
    pub fn derive(cookie: &[u8]) -> Result<Keys> {
        let seed = super::auth::derive(cookie, KEY_LABEL, &[]);
        let pkcs8 = ed25519_pkcs8(&seed);
        let cert = certificate(&pkcs8)?;
        let provider = provider();
        let pinned = Arc::new(Pinned { cert: cert.clone(), provider: provider.clone() });
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.clone()));
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("setup", e))?
            .dangerous()
            .with_custom_certificate_verifier(pinned.clone())
            .with_client_auth_cert(vec![cert.clone()], key())
            .map_err(|e| tls_err("setup", e))?;
        client.resumption = rustls::client::Resumption::disabled();
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("setup", e))?
            .with_client_cert_verifier(pinned)
            .with_single_cert(vec![cert], key())
            .map_err(|e| tls_err("setup", e))?;
        // Connections live long and are never resumed.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Keys { client: Arc::new(client), server: Arc::new(server) })
    }
}

/// Accepts exactly the cluster's certificate, and signatures made with its key.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> std::result::Result<(), rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() && intermediates.is_empty() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A non-blocking socket as `Read` / `Write`: "would block" as an error.
struct Socket {
    fd: RawFd,
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match sys::read_nonblocking(self.fd, buf)? {
            Some(n) => Ok(n),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let parts: Vec<&[u8]> = bufs.iter().take(8).map(|b| &b[..]).collect();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        match sys::write_some_vectored(self.fd, &parts, 0)? {
            0 if total > 0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Ciphertext read from the socket and not yet taken by rustls. Only the
/// connection's one reader (who holds its frame reader) touches it, so
/// the socket is read without the session's lock: a reader spinning on an
/// empty socket never holds up a writer.
struct Rx {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Server: the first byte from the peer was checked to start TLS.
    checked: bool,
}

/// Ciphertext read per socket read, at most.
const RX: usize = 64 * 1024;

/// One connection's TLS state.
pub struct Session {
    tls: Mutex<rustls::Connection>,
    rx: Mutex<Rx>,
    /// Decrypted bytes wait inside: epoll cannot see them.
    plain_waiting: AtomicBool,
    /// Ciphertext waits for room in the socket.
    cipher_waiting: AtomicBool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Session {
    fn new(tls: rustls::Connection, checked: bool) -> Session {
        let mut tls = tls;
        tls.set_buffer_limit(Some(CHUNK));
        let rx = Rx { buf: vec![0u8; RX].into_boxed_slice(), start: 0, end: 0, checked };
        Session { tls: Mutex::new(tls), rx: Mutex::new(rx), plain_waiting: AtomicBool::new(false), cipher_waiting: AtomicBool::new(false) }
    }

    /// The server's side: its handshake completes in the reads of the
    /// first frame (`read`), without blocking.
    pub fn server(keys: &Keys) -> Result<Session> {
        let c = ServerConnection::new(keys.server.clone()).map_err(|e| tls_err("setup", e))?;
        Ok(Session::new(c.into(), false))
    }

    /// The client's side, its handshake completed on the (blocking) dialer's
    /// thread by `deadline`.
    pub fn client(keys: &Keys, fd: RawFd, deadline: Instant) -> Result<Session> {
        let name = ServerName::try_from(NAME).map_err(|e| tls_err("setup", e))?;
        let c = ClientConnection::new(keys.client.clone(), name).map_err(|e| tls_err("setup", e))?;
        let s = Session::new(c.into(), true);
        let wait = |out: bool| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(ErrorKind::Timeout, "the TLS handshake did not complete in time"));
            }
            let slice = Some(left.min(Duration::from_millis(50)));
            let r = if out { sys::poll_out(fd, slice) } else { sys::poll_in(fd, slice) };
            r.map(drop).map_err(|e| Error::io("poll", e))
        };
        {
            let mut tls = s.tls.lock();
            loop {
                if !s.flush_held(&mut tls, fd).map_err(|e| tls_err("handshake", e))? {
                    wait(true)?;
                    continue;
                }
                if !tls.is_handshaking() {
                    break;
                }
                match tls.read_tls(&mut Socket { fd }) {
                    Ok(0) => return Err(tls_err("handshake", "the peer closed the connection (does it refuse TLS?)")),
                    Ok(_) => {
                        if let Err(e) = tls.process_new_packets() {
                            let _ = tls.write_tls(&mut Socket { fd });
                            return Err(tls_err("handshake", e));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(false)?,
                    Err(e) => return Err(tls_err("handshake", e)),
                }
            }
        }
        Ok(s)
    }

    /// Decrypted bytes wait inside the session (read them before polling).
    pub fn plain_waiting(&self) -> bool {
        self.plain_waiting.load(Ordering::Acquire)
    }

    /// Ciphertext read from the socket waits in the session, not taken by
    /// rustls yet (the rest of a record, or the next frame's).
    pub fn staged(&self) -> bool {
        self.rx.try_lock().map(|r| r.start < r.end).unwrap_or(true)
    }

    /// Bytes the socket no longer holds wait inside: epoll cannot see them.
    pub fn buffered(&self) -> bool {
        self.plain_waiting() || self.staged()
    }

    /// Ciphertext waits for room in the socket.
    pub fn pending_out(&self) -> bool {
        self.cipher_waiting.load(Ordering::Acquire)
    }

    /// Writes waiting ciphertext; true when none is left.
    fn flush_held(&self, tls: &mut rustls::Connection, fd: RawFd) -> io::Result<bool> {
        let mut sock = Socket { fd };
        while tls.wants_write() {
            match tls.write_tls(&mut sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.cipher_waiting.store(true, Ordering::Release);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        self.cipher_waiting.store(false, Ordering::Release);
        Ok(true)
    }

    /// Writes waiting ciphertext without blocking; true when none is left.
    pub fn flush(&self, fd: RawFd) -> io::Result<bool> {
        let mut tls = self.tls.lock();
        self.flush_held(&mut tls, fd)
    }

    /// Reads plaintext into `buf` without blocking: `Some(0)` when the
    /// peer closed, `None` when nothing can be had now.
    pub fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut rx = self.rx.lock();
        loop {
            if self.plain_waiting.load(Ordering::Acquire) || rx.start < rx.end {
                let before = (rx.start, rx.end);
                let mut tls = self.tls.lock();
                if let Some(n) = self.decrypt(&mut tls, &mut rx, fd, buf)? {
                    return Ok(Some(n));
                }
                if rx.start < rx.end {
                    if (rx.start, rx.end) == before {
                        return Err(invalid("TLS: records the session would not take".into()));
                    }
                    continue;
                }
            }
            // Nothing decrypted waits: read the socket, without the session's lock.
            let end = rx.end;
            match sys::read_nonblocking(fd, &mut rx.buf[end..])? {
                None => return Ok(None),
                Some(0) => return Ok(Some(0)),
                Some(k) => {
                    if !rx.checked {
                        rx.checked = true;
                        if rx.buf[rx.start] != HANDSHAKE_RECORD {
                            return Err(invalid("the peer did not start TLS, which this connection requires".into()));
                        }
                    }
                    rx.end += k;
                }
            }
        }
    }

    /// Hands rustls the ciphertext read, decrypts and answers what needs
    /// an answer (the handshake, a key update); then copies out plaintext:
    /// `None` when none came of it (a partial record).
    fn decrypt(&self, tls: &mut rustls::Connection, rx: &mut Rx, fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let state = loop {
            // rustls takes a record's worth at a time and must process it
            // before the next; it takes none while its plaintext is full.
            let mut took = 0;
            if rx.start < rx.end {
                let mut staged = &rx.buf[rx.start..rx.end];
                took = tls.read_tls(&mut staged).unwrap_or(0);
                rx.start += took;
            }
            let state = match tls.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // Tell the peer why (an alert), best effort.
                    let _ = tls.write_tls(&mut Socket { fd });
                    return Err(invalid(format!("TLS: {e}")));
                }
            };
            if took == 0 || rx.start == rx.end || state.plaintext_bytes_to_read() >= buf.len() {
                break state;
            }
        };
        if rx.start == rx.end {
            rx.start = 0;
            rx.end = 0;
        }
        let avail = state.plaintext_bytes_to_read();
        let peer_closed = state.peer_has_closed();
        if tls.wants_write() {
            self.flush_held(tls, fd)?;
        }
        let n = if avail > 0 { tls.reader().read(buf)? } else { 0 };
        self.plain_waiting.store(avail > n, Ordering::Release);
        if n > 0 {
            return Ok(Some(n));
        }
        if peer_closed && avail == 0 {
            return Ok(Some(0));
        }
        Ok(None)
    }

    /// Appends up to `left` plaintext bytes to `v`; as `read`.
    pub fn read_append(&self, fd: RawFd, v: &mut Vec<u8>, left: usize) -> io::Result<Option<usize>> {
        let start = v.len();
        let room = (v.capacity() - start).min(left).clamp(1, CHUNK);
        v.resize(start + room, 0);
        let r = self.read(fd, &mut v[start..]);
        let got = match &r {
            Ok(Some(n)) => *n,
            _ => 0,
        };
        v.truncate(start + got);
        r
    }

    /// Encrypts and writes `parts` from byte `skip` on, as much as the
    /// socket takes now: returns the plaintext bytes taken (0 when the
    /// socket is full). Ciphertext it did not take waits inside
    /// (`pending_out`) and goes first next time.
    pub fn write(&self, fd: RawFd, parts: &[&[u8]], skip: usize) -> io::Result<usize> {
        let total: usize = parts.iter().map(|p| p.len()).sum::<usize>().saturating_sub(skip);
        let mut taken = 0;
        loop {
            // The lock for one chunk at a time: a reader gets in between.
            let mut tls = self.tls.lock();
            if !self.flush_held(&mut tls, fd)? || taken == total {
                return Ok(taken);
            }
            // All the parts of a step in one go: one record (a frame's
            // header, meta and payload together), one write.
            let mut slices: [io::IoSlice<'_>; 8] = [io::IoSlice::new(&[]); 8];
            let (mut n, mut room, mut at) = (0, CHUNK, skip + taken);
            for p in parts {
                if at >= p.len() {
                    at -= p.len();
                    continue;
                }
                if n == slices.len() || room == 0 {
                    break;
                }
                let piece = &p[at..(at + room).min(p.len())];
                at = 0;
                room -= piece.len();
                slices[n] = io::IoSlice::new(piece);
                n += 1;
            }
            let k = tls.writer().write_vectored(&slices[..n])?;
            taken += k;
            if !self.flush_held(&mut tls, fd)? || k == 0 {
                return Ok(taken);
            }
        }
    }
}

/// A session's plaintext as a frame reader's source.
pub struct Plain<'a> {
    pub session: &'a Session,
    pub fd: RawFd,
}

impl crate::wire::Source for Plain<'_> {
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.session.read(self.fd, buf)
    }

    fn read_append(&mut self, v: &mut Vec<u8>, left: usize) -> io::Result<Option<usize>> {
        self.session.read_append(self.fd, v, left)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    /// A client and a server session over loopback, their handshake done
    /// (the server has read the client's first byte, "x").
    pub(crate) fn pair(client_cookie: &'static [u8], server_cookie: &'static [u8]) -> (Result<Session>, TcpStream, Session, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let server = Session::server(&Keys::derive(server_cookie).unwrap()).unwrap();
        let bfd = b.as_raw_fd();
        // The server reads (and answers the handshake) until the client is done.
        let srv = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let _ = serve_until_verdict(&server, bfd);
            });
            let c = Session::client(&Keys::derive(client_cookie).unwrap(), a.as_raw_fd(), Instant::now() + Duration::from_secs(5));
            // Wake the server's loop: something to read, or the end.
            if let Ok(c) = &c {
                c.write(a.as_raw_fd(), &[b"x"], 0).unwrap();
            } else {
                let _ = a.shutdown(std::net::Shutdown::Both);
            }
            h.join().unwrap();
            c
        });
        (srv, a, server, b)
    }

    /// The server reads (answering the handshake) until the client's first
    /// byte or a failure: what it read then, `None` after 5 s.
    fn serve_until_verdict(server: &Session, fd: RawFd) -> Option<std::io::Result<usize>> {
        let mut buf = [0u8; 16];
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            match server.read(fd, &mut buf) {
                Ok(None) => {
                    let _ = sys::poll_in(fd, Some(Duration::from_millis(20)));
                }
                Ok(Some(n)) => return Some(Ok(n)),
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    #[test]
    fn the_certificate_is_the_same_everywhere() {
        let a = certificate(&ed25519_pkcs8(&[7; 32])).unwrap();
        let b = certificate(&ed25519_pkcs8(&[7; 32])).unwrap();
        let c = certificate(&ed25519_pkcs8(&[8; 32])).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bytes_cross_encrypted_both_ways_in_any_size() {
        let (client, a, server, b) = pair(b"cookie", b"cookie");
        let client = client.unwrap();
        let (afd, bfd) = (a.as_raw_fd(), b.as_raw_fd());
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut skip = 0;
                while skip < big.len() || client.pending_out() {
                    let n = client.write(afd, &[&big[..1000], &big[1000..]], skip).unwrap();
                    skip += n;
                    if n == 0 {
                        sys::poll_out(afd, Some(Duration::from_millis(50))).unwrap();
                    }
                }
            });
            // The server already read the client's "x".
            let mut got = Vec::with_capacity(big.len());
            while got.len() < big.len() {
                let left = big.len() - got.len();
                match server.read_append(bfd, &mut got, left).unwrap() {
                    Some(0) => panic!("closed early"),
                    Some(_) => {}
                    None => {
                        sys::poll_in(bfd, Some(Duration::from_millis(50))).unwrap();
                    }
                }
            }
            assert!(got == big, "the bytes came through changed");
        });
        // And back.
        server.write(bfd, &[b"reply"], 0).unwrap();
        let mut buf = [0u8; 5];
        let t = Instant::now();
        loop {
            match client.read(afd, &mut buf).unwrap() {
                Some(5) => break,
                Some(n) => panic!("read {n}"),
                None => {
                    assert!(t.elapsed() < Duration::from_secs(5));
                    sys::poll_in(afd, Some(Duration::from_millis(50))).unwrap();
                }
            }
        }
        assert_eq!(&buf, b"reply");
    }

    /// The server's side of the pinning: a client that accepts the
    /// server's certificate but presents another key's is refused.
    #[test]
    fn a_client_presenting_another_certificate_is_refused_by_the_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let ours = ed25519_pkcs8(&super::super::auth::derive(b"cookie", KEY_LABEL, &[]));
        let theirs = ed25519_pkcs8(&[9; 32]);
        let provider = provider();
        let pinned = Arc::new(Pinned { cert: certificate(&ours).unwrap(), provider: provider.clone() });
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(pinned)
            .with_client_auth_cert(vec![certificate(&theirs).unwrap()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(theirs.clone())))
            .unwrap();
        cfg.resumption = rustls::client::Resumption::disabled();
        let mixed = Keys { client: Arc::new(cfg), server: Keys::derive(b"cookie").unwrap().server };
        let server = Session::server(&Keys::derive(b"cookie").unwrap()).unwrap();
        let bfd = b.as_raw_fd();
        let refused = std::thread::scope(|s| {
            let h = s.spawn(|| match serve_until_verdict(&server, bfd) {
                Some(Ok(n)) => Err(format!("the server accepted the client ({n} bytes)")),
                Some(Err(e)) => Ok(e.to_string()),
                None => Err("no verdict in time".to_string()),
            });
            // The client may finish its side; the server refuses its certificate.
            if let Ok(c) = Session::client(&mixed, a.as_raw_fd(), Instant::now() + Duration::from_secs(5)) {
                let _ = c.write(a.as_raw_fd(), &[b"x"], 0);
            }
            h.join().unwrap()
        });
        let why = refused.unwrap();
        assert!(why.contains("TLS"), "{why}");
    }

    #[test]
    fn another_cookie_cannot_complete_the_handshake() {
        let (client, ..) = pair(b"cookie", b"other cookie");
        let e = client.err().expect("a handshake with another cluster's key completed");
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    }

    #[test]
    fn plain_bytes_where_tls_is_required_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        a.write_all(b"LCFRAME plain bytes").unwrap();
        let server = Session::server(&Keys::derive(b"cookie").unwrap()).unwrap();
        sys::poll_in(b.as_raw_fd(), Some(Duration::from_secs(5))).unwrap();
        let e = server.read(b.as_raw_fd(), &mut [0u8; 64]).unwrap_err();
        assert!(e.to_string().contains("did not start TLS"), "{e}");
    }

    #[test]
    fn modes_read_from_their_names() {
        assert_eq!(TlsMode::parse("on"), Some(TlsMode::CrossHost));
        assert_eq!(TlsMode::parse("always"), Some(TlsMode::Always));
        assert_eq!(TlsMode::parse("off"), Some(TlsMode::Off));
        assert_eq!(TlsMode::parse("maybe"), None);
        let lo = Some("127.0.0.1".parse().unwrap());
        let far = Some("10.1.0.2".parse().unwrap());
        assert!(!TlsMode::CrossHost.wants(lo) && TlsMode::CrossHost.wants(far) && TlsMode::Always.wants(lo));
        assert!(!TlsMode::Off.wants(far));
    }
}
